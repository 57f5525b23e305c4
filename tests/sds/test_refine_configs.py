"""The SDS refinement configs (mvdream-sd21-refine.yaml, sv3d-refine.yaml) with the tiny priors on the CPU: a coarse
trial is converted to DMTet, trained a few steps with the rasterizer, saved, resumed, tested and exported."""
import importlib.util
import os
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.slow

TINY_GRID = {"otype": "HashGrid", "n_levels": 4, "n_features_per_level": 2, "log2_hashmap_size": 12,
             "base_resolution": 16, "per_level_scale": 2.0}
TINY_MLP = {"otype": "VanillaMLP", "activation": "ReLU", "output_activation": "none", "n_neurons": 16,
            "n_hidden_layers": 1}
GEOMETRY = ["system.geometry.isosurface_resolution=16",
            "system.geometry.pos_encoding_config=" + str(TINY_GRID).replace("'", ""),
            "system.geometry.mlp_network_config=" + str(TINY_MLP).replace("'", ""),
            "system.geometry_convert_override.isosurface_threshold=5.0",
            "system.renderer.context_type=cpu", "system.exporter.texture_size=32",
            "system.exporter.decimate_target_faces=null", "trainer.enable_progress_bar=false", "use_timestamp=false"]


def blob_trial(root) -> str:
    spec = importlib.util.spec_from_file_location(
        "reconstruction_test_helpers", os.path.join(REPO, "tests", "reconstruction", "reconstruction_test_helpers.py"))
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    cfg = {"density_activation": "softplus", "density_blob_scale": 10.0, "density_blob_std": 0.5,
           "isosurface_threshold": 5.0, "pos_encoding_config": TINY_GRID, "mlp_network_config": TINY_MLP,
           "isosurface_resolution": 32}
    return helpers.make_blob_trial(str(root), cfg)


def launch(*args):
    proc = subprocess.run([sys.executable, os.path.join(REPO, "launch.py"), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, f"launch failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def check_trial(trial, steps: int, resumed_steps: int, coarse_ckpt: str, *export_args: str) -> None:
    last = trial / "ckpts" / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=True)
    assert state["global_step"] == steps
    assert state["state_dict"]["geometry.sdf"].shape == (17 ** 3,)
    assert not any(k.startswith("guidance") for k in state["state_dict"])
    assert (trial / "save" / f"it{steps}-test.mp4").exists()
    os.remove(coarse_ckpt)  # a resumed run does not read the coarse trial again
    launch("--config", str(trial / "configs" / "parsed.yaml"), "--train", f"resume={last}",
           f"trainer.max_steps={resumed_steps}")
    resumed = torch.load(last, map_location="cpu", weights_only=True)
    assert resumed["global_step"] == resumed_steps
    assert not torch.equal(resumed["state_dict"]["geometry.sdf"], state["state_dict"]["geometry.sdf"])
    parsed, resume = str(trial / "configs" / "parsed.yaml"), f"resume={last}"
    before = sorted((trial / "save").glob(f"it{resumed_steps}*-export"))
    launch("--config", parsed, "--export", resume, *export_args)
    (export,) = sorted(set((trial / "save").glob(f"it{resumed_steps}*-export")) - set(before))  # a new folder
    assert (export / "model.obj").exists() and (export / "model.glb").exists()


def test_mvdream_refine_config(tmp_path, mvdream_tiny_ckpt):
    coarse = blob_trial(tmp_path / "coarse")
    launch("--config", os.path.join(REPO, "configs", "mvdream-sd21-refine.yaml"), "--train",
           f"exp_root_dir={tmp_path}", "tag=tiny", "system.prompt_processor.prompt=a tiny cat",
           f"system.guidance.pretrained_model_name_or_path={mvdream_tiny_ckpt}",
           f"system.prompt_processor.cache_dir={tmp_path / 'cache'}", f"system.geometry_convert_from={coarse}",
           "data.width=16", "data.height=16", "data.eval_height=16", "data.eval_width=16", "data.n_val_views=1",
           "data.n_test_views=2", "system.guidance.image_size=16", "system.background.random_aug=false",
           "trainer.max_steps=2", "trainer.val_check_interval=2", "checkpoint.every_n_train_steps=2", *GEOMETRY)
    # exporting never loads the MVDream prior
    check_trial(tmp_path / "mvdream-sd21-rescale0.5-refine" / "tiny", 2, 3, coarse,
                "system.guidance.pretrained_model_name_or_path=/nonexistent")


def test_sv3d_refine_config(tmp_path, sv3d_write_rgba):
    from sv3d.tiny import tiny_config, write_tiny_checkpoint

    write_tiny_checkpoint(str(tmp_path / "sv3d_u.safetensors"), "sv3d_u", seed=3)
    OmegaConf.save(tiny_config("sv3d_u"), str(tmp_path / "sv3d_u.yaml"))
    image = sv3d_write_rgba(tmp_path / "object.png")
    coarse = blob_trial(tmp_path / "coarse")
    launch("--config", os.path.join(REPO, "configs", "sv3d-refine.yaml"), "--train", f"exp_root_dir={tmp_path}",
           "tag=tiny", f"data.image_path={image}", "data.height=16", "data.width=16", "data.orbit_height=8",
           "data.orbit_width=8", "data.eval_height=16", "data.eval_width=16", "data.n_val_views=1",
           "data.n_test_views=2", f"system.guidance.pretrained_model_name_or_path={tmp_path / 'sv3d_u.safetensors'}",
           f"system.guidance.original_config={tmp_path / 'sv3d_u.yaml'}", "system.guidance.image_size=32",
           "system.guidance.grad_frames=3", "system.guidance.vae_chunk_size=2",
           f"system.geometry_convert_from={coarse}", "trainer.max_steps=2", "trainer.val_check_interval=2",
           "checkpoint.every_n_train_steps=2", *GEOMETRY)
    check_trial(tmp_path / "sv3d-image-to-3d-refine" / "tiny", 2, 3, coarse)
