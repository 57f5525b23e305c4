"""Depth conditioning: the MiDaS -> transformers conversion (full-size layout on the meta device), shapes and
per-frame normalisation of the 9-channel depth tensor."""

import pytest
import torch
from transformers import DPTForDepthEstimation

from hi3d.depth import DepthConditioner, convert_midas_dpt_hybrid, dpt_hybrid_config
from hi3d.testing import midas_dpt_hybrid_shapes


def test_full_size_midas_layout_converts_key_for_key():
    shapes = midas_dpt_hybrid_shapes(width=768, layers=12, grid=24, stem=64, hidden=(256, 512, 1024), depths=(3, 4, 9),
                                     features=256, mlp_ratio=4, classes=1000)
    sd = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    cfg = dpt_hybrid_config(sd)
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.image_size, cfg.neck_hidden_sizes) == (768, 12, 384, [256, 512, 768, 768])
    assert cfg.backbone_config.depths == [3, 4, 9]
    with torch.device("meta"):
        model = DPTForDepthEstimation(cfg)
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    converted = {k: tuple(v.shape) for k, v in convert_midas_dpt_hybrid(sd).items()}
    assert converted == own
    assert "dpt.encoder.layer.11.attention.attention.value.weight" in converted


def test_unknown_midas_key_is_an_error():
    sd = {k: torch.empty(s, device="meta") for k, s in midas_dpt_hybrid_shapes().items()}
    sd["scratch.extra.weight"] = torch.empty(1, device="meta")
    with pytest.raises(KeyError, match="scratch.extra.weight"):
        convert_midas_dpt_hybrid(sd)


def test_depth_tensor_shape_and_per_frame_normalisation(pipes):
    depth: DepthConditioner = pipes("stage2").depth
    assert depth.depth_size(1024, 1024) == (384, 384) and depth.depth_size(512, 512) == (192, 192)
    frames = torch.rand(3, 3, 96, 96, generator=torch.Generator().manual_seed(0)) * 2 - 1
    frames[2] = frames[2] * 0.1  # a low-contrast frame still spans [0, 1] after the per-frame min-max
    out = depth(frames)
    assert out.shape == (3, 9, 12, 12)
    raw = torch.nn.functional.interpolate(depth.depth(frames)[:, None], size=(36, 36), mode="bilinear", align_corners=False)
    for i in range(3):
        assert out[i].min().item() == 0.0 and out[i].max().item() == pytest.approx(1.0)
        expected = (raw[i] - raw[i].min()) / (raw[i] - raw[i].min()).max()
        # space-to-depth '(c h0 w0)': channel 3*h0 + w0 holds pixel (3h + h0, 3w + w0)
        for h0 in range(3):
            for w0 in range(3):
                torch.testing.assert_close(out[i, 3 * h0 + w0], expected[0, h0::3, w0::3], atol=1e-6, rtol=0)
    # another size than the model's 32² grid: the position embedding is resized (MiDaS' forward_flex)
    assert depth(torch.zeros(1, 3, 256, 256)).shape == (1, 9, 32, 32)
    with pytest.raises(ValueError, match="too small"):
        depth(torch.zeros(1, 3, 64, 64))
