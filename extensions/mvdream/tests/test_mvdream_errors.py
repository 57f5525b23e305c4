"""Bad inputs to from_single_file give errors that say what is wrong and what to do."""

from __future__ import annotations

import pytest
import torch

from mvdream import MVDreamCheckpointError, MVDreamPipeline
from mvdream.testing import write_checkpoint


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"not found: .*nope\.pt.*huggingface\.co/MVDream/MVDream"):
        MVDreamPipeline.from_single_file(tmp_path / "nope.pt")


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_truncated_file(tmp_path, tiny_state, suffix):
    path = write_checkpoint(tiny_state, tmp_path / f"full{suffix}")
    data = path.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(MVDreamCheckpointError, match=r"truncated or corrupt.*download it again"):
        MVDreamPipeline.from_single_file(cut)


def test_sv3d_checkpoint_is_rejected(tmp_path):
    # generative-models layout: UNet with temporal layers, conditioner embedders, decoder-only first stage.
    state = {
        "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 8, 3, 3),
        "model.diffusion_model.input_blocks.1.0.time_stack.in_layers.0.weight": torch.zeros(320),
        "model.diffusion_model.input_blocks.1.1.time_mixer.mix_factor": torch.zeros(1),
        "conditioner.embedders.0.open_clip.model.visual.proj": torch.zeros(1280, 1024),
        "first_stage_model.decoder.conv_in.weight": torch.zeros(512, 4, 3, 3),
    }
    path = write_checkpoint(state, tmp_path / "sv3d_u.safetensors")
    with pytest.raises(MVDreamCheckpointError, match=r"SV3D.*not MVDream.*sv3d package"):
        MVDreamPipeline.from_single_file(path)


def test_missing_camera_mlp(tmp_path, tiny_state):
    state = {k: v for k, v in tiny_state.items() if ".camera_embed." not in k}
    path = write_checkpoint(state, tmp_path / "no-camera.pt")
    with pytest.raises(MVDreamCheckpointError, match=r"no camera MLP.*camera_embed\.0\.weight.*require_camera=False"):
        MVDreamPipeline.from_single_file(path)


def test_incomplete_camera_mlp(tmp_path, tiny_state):
    state = {k: v for k, v in tiny_state.items() if ".camera_embed.2." not in k}
    path = write_checkpoint(state, tmp_path / "half-camera.pt")
    with pytest.raises(MVDreamCheckpointError, match=r"incomplete camera MLP.*camera_embed\.2\.weight"):
        MVDreamPipeline.from_single_file(path)


def test_unet_only_file(tmp_path, tiny_state):
    state = {k: v for k, v in tiny_state.items() if k.startswith("model.diffusion_model.")}
    with pytest.raises(MVDreamCheckpointError, match=r"no autoencoder weights"):
        MVDreamPipeline.from_single_file(write_checkpoint(state, tmp_path / "unet.pt"))


def test_diffusers_format_file(tmp_path):
    state = {"conv_in.weight": torch.zeros(4, 4, 3, 3), "down_blocks.0.resnets.0.conv1.weight": torch.zeros(4, 4, 3, 3)}
    with pytest.raises(MVDreamCheckpointError, match=r"diffusers-format.*from_pretrained"):
        MVDreamPipeline.from_single_file(write_checkpoint(state, tmp_path / "diffusion_pytorch_model.safetensors"))


def test_unrelated_file(tmp_path):
    with pytest.raises(MVDreamCheckpointError, match=r"not an MVDream checkpoint.*first keys: fc\.weight"):
        MVDreamPipeline.from_single_file(write_checkpoint({"fc.weight": torch.zeros(2, 2)}, tmp_path / "x.pt"))


def test_pickled_objects_are_not_loaded(tmp_path, tiny_state):
    path = tmp_path / "pickle.ckpt"
    torch.save({"state_dict": tiny_state, "callbacks": {"cb": torch.nn.Identity()}}, path)
    with pytest.raises(MVDreamCheckpointError, match=r"weights_only=True"):
        MVDreamPipeline.from_single_file(path)


def test_schedule_mismatch(tmp_path, tiny_state):
    state = dict(tiny_state, betas=torch.linspace(1e-4, 2e-2, 1000))  # linear, not scaled-linear
    with pytest.raises(MVDreamCheckpointError, match=r"'betas' buffer is not the scaled-linear schedule"):
        MVDreamPipeline.from_single_file(write_checkpoint(state, tmp_path / "betas.pt"))


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(MVDreamCheckpointError, match=r"is a directory.*from_pretrained"):
        MVDreamPipeline.from_single_file(tmp_path)
