"""multiview-reconstruction-system pieces (losses, chunked rendering) and the tiny end-to-end main job."""
from __future__ import annotations

import glob
import os
import subprocess
import sys

import pytest
import torch
import trimesh

import threestudio
from threestudio.utils.config import load_config

from reconstruction_test_helpers import REPO

CONFIG = os.path.join(REPO, "configs", "reconstruction-example.yaml")


def test_chunked_view_rendering_equals_one_pass():
    cfg = load_config(CONFIG, cli_args=["system.geometry.pos_encoding_config.log2_hashmap_size=12",
                                        "system.renderer.num_samples_per_ray=64"])
    system = threestudio.find(cfg.system_type)(cfg.system)
    system.eval()
    system.renderer.estimator.fill(True)  # an untrained occupancy grid is empty
    from threestudio.data.camera_sampling import orbit_cameras

    batch = orbit_cameras(1, 20.0, 2.0, 40.0, 12, 10)
    batch["bg_color"] = torch.ones(3)
    whole = system.renderer(batch["rays_o"], batch["rays_d"], batch["light_positions"], bg_color=batch["bg_color"])
    system.cfg.eval_chunk_rays = 7
    chunked = system.render_view(batch)
    assert chunked["comp_rgb"].shape == (1, 12, 10, 3)
    assert whole["opacity"].max() > 0.1  # the initial density blob is visible
    for key in ("comp_rgb", "opacity", "depth"):
        torch.testing.assert_close(chunked[key], whole[key], atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_main_job_end_to_end_tiny(tmp_path):
    """The README main job with a tiny budget: checkpoint, test video, textured mesh; then extract_color_mesh."""
    steps = 6
    overrides = [
        f"exp_root_dir={tmp_path}", "tag=tiny", "use_timestamp=false",
        "data.height=32", "data.width=32", "data.batch_size=512", "data.n_test_views=3", "data.n_val_views=1",
        f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps}", "checkpoint.every_n_train_steps=1000",
        "system.geometry.pos_encoding_config.log2_hashmap_size=14", "system.renderer.num_samples_per_ray=64",
        "system.exporter.isosurface_resolution=40", "system.exporter.texture_size=128",
        "system.exporter.decimate_target_faces=2000", "trainer.enable_progress_bar=false",
        "trainer.log_every_n_steps=1",
    ]
    env = dict(os.environ)
    result = subprocess.run([sys.executable, "launch.py", "--config", CONFIG, "--train", *overrides], cwd=REPO,
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    trial = os.path.join(tmp_path, "reconstruction-example", "tiny")
    assert os.path.isfile(os.path.join(trial, "ckpts", "last.ckpt"))
    save = os.path.join(trial, "save")
    assert os.path.isfile(os.path.join(save, f"it{steps}-0.png"))  # validation image
    assert os.path.getsize(os.path.join(save, f"it{steps}-test.mp4")) > 1000
    assert len(glob.glob(os.path.join(save, f"it{steps}-test", "*.png"))) == 3
    export = os.path.join(save, f"it{steps}-export")
    for name in ("model.obj", "model.mtl", "texture_kd.png", "model.glb"):
        assert os.path.isfile(os.path.join(export, name)), name
    mesh = trimesh.load(os.path.join(export, "model.glb"), force="mesh")
    assert len(mesh.faces) > 100
    metrics = open(glob.glob(os.path.join(trial, "csv_logs", "*", "metrics.csv"))[0]).read()
    assert "val/psnr" in metrics and "train/loss_rgb" in metrics

    out = os.path.join(tmp_path, "mesh_color.ply")
    result = subprocess.run([sys.executable, "extract_color_mesh.py", trial, "--resolution", "32", "--threshold", "25",
                             "--n-views", "2", "--elevations", "20", "--view-size", "32", "--out", out],
                            cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    ply = trimesh.load(out, process=False)
    assert ply.body_count == 1 and len(ply.visual.vertex_colors) == len(ply.vertices)


def test_extract_color_mesh_projection_inverts_camera_rays():
    import importlib.util

    spec = importlib.util.spec_from_file_location("extract_color_mesh", os.path.join(REPO, "extract_color_mesh.py"))
    ecm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ecm)
    from threestudio.data.camera_sampling import orbit_cameras

    cams = orbit_cameras(1, 20.0, 2.0, 40.0, 16, 16, azimuth_start=30.0)
    o, d = cams["rays_o"][0, 5, 9], cams["rays_d"][0, 5, 9]
    point = (o + 1.3 * d)[None]
    xy, depth = ecm.project(point, cams["c2w"][0], 40.0, 16, 16)
    torch.testing.assert_close(xy[0], torch.tensor([9.5, 5.5]), atol=1e-4, rtol=0)
    assert float(depth[0]) > 0
    image = torch.arange(16 * 16, dtype=torch.float32).reshape(16, 16, 1)
    assert float(ecm.bilinear(image, xy)[0, 0]) == pytest.approx(5 * 16 + 9, abs=1e-3)
