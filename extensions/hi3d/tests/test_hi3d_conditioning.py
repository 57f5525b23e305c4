"""The vector conditioning slot by slot, the aesthetic score, and what the unconditional branch sees."""

import math

import torch
import torch.nn.functional as F

from hi3d import refine_orbit, sample_orbit, stage1_vector_ids, stage2_vector_ids
from sv3d.embeddings import embed_added_ids


def sinusoid(value: float, width: int) -> torch.Tensor:
    """cos-first sinusoid written out: frequencies exp(-ln(1e4) i / half), an odd width ends with a zero."""
    half = width // 2
    f = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float64) / half)
    out = torch.cat([torch.cos(value * f), torch.sin(value * f)])
    return torch.cat([out, torch.zeros(width % 2, dtype=torch.float64)]).float()


def test_stage1_vector_slot_by_slot(pipes):
    unet = pipes("stage1").unet
    assert unet.added_id_widths == [256, 256, 256]
    score, elev, aug = 5.3125, 20, 0.02
    vec = embed_added_ids(stage1_vector_ids(score, elev, aug), unet.added_id_widths, unet.added_id_kinds)[0]
    assert vec.shape == (768,)
    assert vec[0].item() == score  # the raw predicted score
    # float32 phases of arguments up to 531 (as the reference computes them) against a float64 formula
    torch.testing.assert_close(vec[1:256], sinusoid(100 * score, 255), atol=1e-4, rtol=0)
    assert vec[255].item() == 0.0  # the odd-width sinusoid's padding
    torch.testing.assert_close(vec[256:512], sinusoid(elev, 256), atol=1e-6, rtol=0)
    torch.testing.assert_close(vec[512:], sinusoid(aug, 256), atol=1e-6, rtol=0)


def test_stage2_vector_slot_by_slot(pipes):
    unet = pipes("stage2").unet
    vec = embed_added_ids(stage2_vector_ids(-10, 0.02), unet.added_id_widths, unet.added_id_kinds)[0]
    assert vec.shape == (512,)
    torch.testing.assert_close(vec[:256], sinusoid(-10, 256), atol=1e-6, rtol=0)
    torch.testing.assert_close(vec[256:], sinusoid(0.02, 256), atol=1e-6, rtol=0)


def test_aesthetic_score_is_clip_l_then_mlp(pipes):
    scorer = pipes("stage1").aesthetic
    img = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    # the reference's framing: stretch to 224 x 384, keep columns 80:304, CLIP normalisation
    y = (F.interpolate(img, size=(224, 384), mode="bilinear", align_corners=False)[..., 80:304] + 1) / 2
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    feats = scorer.clip(pixel_values=(y - mean) / std).image_embeds
    expected = scorer.mlp(feats / feats.norm(dim=-1, keepdim=True))[:, 0]
    torch.testing.assert_close(scorer(img), expected)
    assert scorer.clip.config.hidden_act == "quick_gelu"


def _capture_unet_inputs(pipe, monkeypatch):
    calls = []
    forward = pipe.unet.forward

    def spy(sample, timestep, encoder_hidden_states, added_time_ids, return_dict=True):
        calls.append((sample.clone(), encoder_hidden_states.clone(), added_time_ids.clone()))
        return forward(sample, timestep, encoder_hidden_states, added_time_ids, return_dict)

    monkeypatch.setattr(pipe.unet, "forward", spy)
    return calls


def test_stage1_uncond_zeroes_clip_and_latent_keeps_vector(pipes, monkeypatch):
    pipe = pipes("stage1")
    calls = _capture_unet_inputs(pipe, monkeypatch)
    img = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    out = sample_orbit(pipe, img, elevation_deg=10, num_steps=1, num_frames=4, seed=3)
    sample, ctx, ids = calls[0]
    assert sample.shape == (2, 4, 8, 8, 8)
    assert sample[0, :, 4:].abs().max() == 0 and sample[1, :, 4:].abs().max() > 0
    assert ctx[0].abs().max() == 0 and ctx[1].abs().max() > 0
    torch.testing.assert_close(ids[0], ids[1])
    assert ids[1].tolist() == [out.aesthetic_score, 10.0, 0.019999999552965164]
    assert out.frames.shape == (4, 3, 64, 64)


def test_stage2_uncond_zeroes_depth_too(pipes, monkeypatch):
    pipe = pipes("stage2")
    calls = _capture_unet_inputs(pipe, monkeypatch)
    frames = torch.rand(4, 3, 96, 96, generator=torch.Generator().manual_seed(2)) * 2 - 1
    out = refine_orbit(pipe, frames, elevation_deg=0, num_steps=1, seed=3)
    sample, ctx, ids = calls[0]
    assert sample.shape == (2, 4, 17, 12, 12)
    assert sample[0, :, 4:].abs().max() == 0  # depth (9) and condition latents (4) zeroed
    depth = sample[1, :, 4:13]
    assert depth.min() >= 0 and depth.max() <= 1 and depth.max() > 0
    assert sample[1, :, 13:].abs().max() > 0
    assert ctx[0].abs().max() == 0 and ctx[1].abs().max() > 0
    torch.testing.assert_close(ids[0], ids[1])
    assert out.frames.shape == (4, 3, 96, 96)
