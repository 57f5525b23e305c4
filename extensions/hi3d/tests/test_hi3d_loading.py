"""Reading the released layouts: DeepSpeed stage dicts, auxiliary files, load reports and refusals."""

import os
import pickle
import zipfile

import pytest
import torch

from hi3d import Hi3DPipeline, load_stage_checkpoint
from hi3d.aesthetic import AestheticMLP, load_clip_l
from hi3d.specs import detect_stage
from hi3d.testing import stage_checkpoint_shapes, write_clip_l_torchscript
from hi3d.torchscript_weights import read_torchscript_state_dict

from hi3d.testing import TINY_HEAD_CHANNELS as HEADS


def test_deepspeed_dict_is_unwrapped(tiny_dir):
    raw = torch.load(tiny_dir["stage1"], weights_only=True)
    assert set(raw) >= {"module"} and all(k.startswith("module.") for k in raw["module"])
    sd = load_stage_checkpoint(tiny_dir["stage1"])
    assert set(sd) == set(stage_checkpoint_shapes("stage1"))
    key = "model.diffusion_model.label_emb.0.0.weight"
    assert torch.equal(sd[key], raw["module"]["module." + key]) and sd[key].shape[1] == 768
    assert detect_stage(sd) == "stage1"
    assert detect_stage(load_stage_checkpoint(tiny_dir["stage2"])) == "stage2"


def test_load_report_accounts_for_every_tensor(pipes):
    for stage in ("stage1", "stage2"):
        r = pipes(stage).load_report
        assert r.unexpected == [] and r.unet_missing == [] and r.unet_unexpected == []
        assert r.used["unet"] and r.used["vae"] and r.used["first_stage_encoder"]
    assert pipes("stage1").load_report.used["aesthetic"]
    assert pipes("stage2").load_report.used["depth"]
    assert pipes("stage2").unet.config.in_channels == 17
    assert pipes("stage2").unet.config.projection_class_embeddings_input_dim == 512


def test_missing_and_unknown_unet_keys_are_reported(tiny_dir, tmp_path):
    raw = torch.load(tiny_dir["stage1"], weights_only=True)
    gone = "module.model.diffusion_model.out.2.bias"
    kept = raw["module"].pop(gone)
    path = tmp_path / "first_stage.pt"
    torch.save(raw, path)
    with pytest.raises(ValueError, match=r"lacks 1 UNet tensors.*conv_out\.bias"):
        Hi3DPipeline.from_single_file(str(path), num_head_channels=HEADS)
    pipe = Hi3DPipeline.from_single_file(str(path), num_head_channels=HEADS, allow_missing_unet_keys=True)
    assert pipe.load_report.unet_missing == ["unet.conv_out.bias"]
    raw["module"][gone] = kept
    raw["module"]["module.model.diffusion_model.extra_block.weight"] = torch.zeros(1)
    torch.save(raw, path)
    with pytest.raises(ValueError, match="extra_block"):
        Hi3DPipeline.from_single_file(str(path), num_head_channels=HEADS)


def test_pickled_objects_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.getcwd, ())

    path = tmp_path / "first_stage.pt"
    torch.save({"module": {"module.x": torch.zeros(1)}, "obj": Evil()}, path)
    with pytest.raises(ValueError, match="weights-only"):
        load_stage_checkpoint(str(path))
    torch.save({"module": {"module.cond.x": torch.zeros(1)}}, path)
    with pytest.raises(ValueError, match="model.diffusion_model"):
        load_stage_checkpoint(str(path))


def test_auxiliary_files_replace_missing_embedders(bare_dir, tmp_path):
    """Stage files without the aesthetic / depth / ViT-H weights load them from the ckpts/ files."""
    p1 = Hi3DPipeline.from_single_file(bare_dir["stage1"], num_head_channels=HEADS)
    clip = load_clip_l(bare_dir["clip_l"])
    for a, b in zip(p1.aesthetic.clip.parameters(), clip.parameters()):
        assert torch.equal(a, b)
    mlp = AestheticMLP.from_state_dict(torch.load(bare_dir["aesthetic_mlp"], weights_only=True))
    assert torch.equal(p1.aesthetic.mlp.layers[7].weight, mlp.layers[7].weight)
    assert p1.load_report.sources["image_encoder"] == bare_dir["open_clip"]
    p2 = Hi3DPipeline.from_single_file(bare_dir["stage2"], num_head_channels=HEADS)
    assert p2.depth is not None
    os.makedirs(tmp_path / "alone")
    alone = tmp_path / "alone" / "first_stage.pt"
    os.link(bare_dir["stage1"], alone)
    with pytest.raises(FileNotFoundError, match="open_clip_pytorch_model.bin"):
        Hi3DPipeline.from_single_file(str(alone), num_head_channels=HEADS)


def test_torchscript_archive_is_read_without_running_code(tmp_path):
    path = tmp_path / "ViT-L-14.pt"
    written = write_clip_l_torchscript(str(path), seed=1)
    read = read_torchscript_state_dict(str(path))
    assert set(read) == set(written)
    assert all(torch.equal(read[k], written[k]) for k in written)
    # an archive whose pickle names another global is refused
    bad = tmp_path / "bad.pt"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("bad/data.pkl", pickle.dumps(os.getcwd, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        read_torchscript_state_dict(str(bad))
    with pytest.raises(ValueError, match="not a TorchScript archive"):
        read_torchscript_state_dict(__file__)
