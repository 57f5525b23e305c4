"""The refinement stage end to end: a coarse NeRF trial -> configs/reconstruction-refine.yaml (DMTet + the
CPU rasterizer) trains, saves, resumes, tests and exports the refined mesh."""
from __future__ import annotations

import glob
import os
import subprocess
import sys

import pytest
import torch
import trimesh
from threestudio.utils.config import ConfigError

from reconstruction_test_helpers import REPO, make_blob_trial, make_tiny_dataset

CONFIG = os.path.join(REPO, "configs", "reconstruction-refine.yaml")
TINY_GRID = {"otype": "HashGrid", "n_levels": 4, "n_features_per_level": 2, "log2_hashmap_size": 12,
             "base_resolution": 4, "per_level_scale": 2.0}
TINY_MLP = {"otype": "VanillaMLP", "activation": "ReLU", "output_activation": "none", "n_neurons": 16,
            "n_hidden_layers": 1}


def make_coarse_trial(root: str) -> str:
    return make_blob_trial(root, {"density_activation": "trunc_exp", "density_blob_scale": 10.0,
                                  "density_blob_std": 0.8, "pos_encoding_config": TINY_GRID,
                                  "mlp_network_config": TINY_MLP, "isosurface_resolution": 32})


def run(args: list[str]) -> None:
    result = subprocess.run([sys.executable, "launch.py", *args], cwd=REPO, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]


def test_convert_from_errors_name_the_key(tmp_path):
    import threestudio
    from threestudio.utils.config import load_config

    cfg = load_config(CONFIG, cli_args=[f"system.geometry_convert_from={tmp_path}/missing.ckpt"])
    with pytest.raises(ConfigError, match="geometry_convert_from: no checkpoint"):
        threestudio.find(cfg.system_type)(cfg.system).on_train_start()
    ckpt = make_coarse_trial(str(tmp_path / "coarse"))
    cfg = load_config(CONFIG, cli_args=[f"system.geometry_convert_from={ckpt}", "system.geometry.isosurface_resolution=8"])
    system = threestudio.find(cfg.system_type)(cfg.system)  # converts when training starts
    with pytest.raises(ConfigError, match="pos_encoding_config, mlp_network_config"):
        system.convert_geometry(ckpt)  # the refine config's hash grid is not the coarse one's


@pytest.mark.slow
def test_refine_config_trains_saves_resumes_tests_and_exports(tmp_path):
    data = make_tiny_dataset(str(tmp_path / "data"), size=32, n_train=4, n_test=1)
    ckpt = make_coarse_trial(str(tmp_path / "coarse"))
    common = [
        f"exp_root_dir={tmp_path}", "tag=tiny", "use_timestamp=false", f"data.dataroot={data}",
        "data.n_test_views=2", "data.n_val_views=1", "trainer.enable_progress_bar=false",
        "trainer.log_every_n_steps=1", "checkpoint.every_n_train_steps=1000",
        "system.geometry.isosurface_resolution=24", "system.renderer.context_type=cpu",
        # the blob's density falls off softly: filling fog would move its surface out to the free level
        "system.geometry.convert_free_level=null",
        "system.exporter.texture_size=64", "system.exporter.decimate_target_faces=1000",
        "system.geometry.pos_encoding_config=" + str(TINY_GRID).replace("'", ""),
        "system.geometry.mlp_network_config=" + str(TINY_MLP).replace("'", ""),
    ]
    run(["--config", CONFIG, "--train", f"system.geometry_convert_from={ckpt}", "trainer.max_steps=3",
         "trainer.val_check_interval=3", *common])
    trial = os.path.join(tmp_path, "reconstruction-refine", "tiny")
    last = os.path.join(trial, "ckpts", "last.ckpt")
    state = torch.load(last, map_location="cpu", weights_only=True)["state_dict"]
    assert state["geometry.sdf"].shape == ((24 + 1) ** 3,)
    box = state["geometry.isosurface_bbox"]
    assert (box[1] - box[0]).max() < 1.6  # the lattice hugs the coarse sphere (radius ~0.54), not the 2.0 box
    save = os.path.join(trial, "save")
    assert os.path.isfile(os.path.join(save, "it3-0.png"))
    assert len(glob.glob(os.path.join(save, "it3-test", "*.png"))) == 2
    for name in ("model.obj", "model.glb", "texture_kd.png"):
        assert os.path.isfile(os.path.join(save, "it3-export", name)), name
    mesh = trimesh.load(os.path.join(save, "it3-export", "model.obj"), process=False)
    radius = mesh.vertices.max(0) - mesh.vertices.min(0)
    assert len(mesh.faces) > 200 and 0.9 < radius.max() < 1.3  # the converted sphere, not marching cubes noise

    # resume: continues from step 3 to 5 (the coarse checkpoint is not read again)
    os.remove(ckpt)
    run(["--config", os.path.join(trial, "configs", "parsed.yaml"), "--train", f"resume={last}",
         "trainer.max_steps=5", "trainer.val_check_interval=5"])
    resumed = torch.load(last, map_location="cpu", weights_only=True)
    assert resumed["global_step"] == 5
    assert not torch.equal(resumed["state_dict"]["geometry.sdf"], state["geometry.sdf"])
    assert os.path.isfile(os.path.join(save, "it5-export", "model.glb"))
    metrics = open(glob.glob(os.path.join(trial, "csv_logs", "*", "metrics.csv"))[0]).read()
    assert "train/loss_normal_consistency" in metrics and "train/loss_mask" in metrics


def test_whole_view_training_batches_carry_matching_projections(tmp_path):
    import threestudio

    data = make_tiny_dataset(str(tmp_path / "data"), size=16, n_train=3, n_test=1)
    dm = threestudio.find("multiview-image-datamodule")({"dataroot": data, "train_views_per_step": 2})
    dm.setup("fit")
    batch = dm.train_dataset.batch_at(5)
    assert batch["rgb"].shape == (2, 16, 16, 3) and batch["mask"].shape == (2, 16, 16, 1)
    assert batch["mvp_mtx"].shape == (2, 4, 4) and batch["height"] == 16
    torch.testing.assert_close(dm.train_dataset.batch_at(5)["rgb"], batch["rgb"])  # step-indexed
    # a point on the ray of pixel (row 3, column 11) projects to that pixel's centre (NDC y up)
    point = batch["rays_o"][:, 3, 11] + 1.7 * batch["rays_d"][:, 3, 11]
    clip = torch.einsum("bij,bj->bi", batch["mvp_mtx"], torch.cat([point, torch.ones(2, 1)], dim=-1))
    ndc = clip[:, :2] / clip[:, 3:]
    torch.testing.assert_close(ndc, torch.tensor([[2 * 11.5 / 16 - 1, 1 - 2 * 3.5 / 16]] * 2), atol=1e-4, rtol=0)
    with pytest.raises(ConfigError, match="train_views_per_step"):
        threestudio.find("multiview-image-datamodule")({"dataroot": data, "train_views_per_step": -1})
