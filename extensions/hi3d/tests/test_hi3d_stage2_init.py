"""`python -m hi3d.make_stage2_init`: SVD-xt -> 17-channel, 512-wide stage-2 init."""

import pytest
import torch
from safetensors.torch import load_file

from hi3d import Hi3DPipeline
from hi3d.make_stage2_init import CONV_IN, LABEL_EMB, main
from sv3d.tiny import write_tiny_checkpoint

from hi3d.testing import TINY_HEAD_CHANNELS as HEADS


def test_stage2_init_surgery(tmp_path, bare_dir):
    svd_path = tmp_path / "svd_xt_image_decoder.safetensors"
    svd = write_tiny_checkpoint(str(svd_path), "svd_xt_image_decoder", seed=2)
    out = tmp_path / "init" / "stage2_init.safetensors"
    assert main(["--svd", str(svd_path), "--out", str(out), "--midas", bare_dir["midas"]]) == 0
    sd = load_file(str(out))
    conv, label = sd[CONV_IN], sd[LABEL_EMB]
    assert conv.shape[1] == 17 and label.shape[1] == 512
    assert torch.equal(conv[:, :4], svd[CONV_IN][:, :4])
    assert conv[:, 4:13].abs().max() == 0
    assert torch.equal(conv[:, 13:], svd[CONV_IN][:, 4:])
    assert label[:, :256].abs().max() == 0
    assert torch.equal(label[:, 256:], svd[LABEL_EMB][:, 512:])
    for k, v in svd.items():
        if k not in (CONV_IN, LABEL_EMB):
            assert torch.equal(sd[k], v), k
    assert any(k.startswith("conditioner.embedders.2.model.model.") for k in sd)
    # it is a stage-2 model: it loads and refuses a second surgery
    pipe = Hi3DPipeline.from_single_file(str(out), ckpt_dir=str(tmp_path), num_head_channels=HEADS,
                                         aux=type("A", (), {"open_clip": None, "clip_l": None, "aesthetic_mlp": None, "midas": None})())
    assert pipe.stage == "stage2" and pipe.load_report.unexpected == []
    assert main(["--svd", str(out), "--out", str(tmp_path / "again.safetensors")]) == 2


def test_stage2_init_never_overwrites(tmp_path, capsys):
    out = tmp_path / "exists.safetensors"
    out.write_bytes(b"mine")
    assert main(["--svd", str(tmp_path / "missing.safetensors"), "--out", str(out)]) == 2
    assert out.read_bytes() == b"mine"
    assert "already exists" in capsys.readouterr().err
