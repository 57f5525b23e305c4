"""dynamic-reconstruction-system: grouped rendering of rays at several times, and tiny end-to-end runs of the
4D example config (4D video, fixed-view clip, per-frame meshes + manifest, exact resume, export selection)."""
from __future__ import annotations

import csv
import glob
import importlib.util
import json
import os

import pytest
import torch
import trimesh

import threestudio
from threestudio.utils.config import load_config

from reconstruction_test_helpers import REPO, make_tiny_dataset_4d

CONFIG = os.path.join(REPO, "configs", "reconstruction-4d-example.yaml")
TINY = ["system.geometry.pos_encoding_config.log2_hashmap_size=12", "system.geometry.pos_encoding_config.n_levels=8",
        "system.geometry.deformation_pos_encoding_config.log2_hashmap_size=12",
        "system.renderer.num_samples_per_ray=32", "system.renderer.occ_grid_resolution=16",
        "system.renderer.occ_warmup_steps=2", "system.renderer.occ_update_every_n_steps=2"]


def test_rays_at_several_times_render_as_separate_groups(tmp_path):
    cfg = load_config(CONFIG, cli_args=[f"data.dataroot={tmp_path}", *TINY])
    system = threestudio.find(cfg.system_type)(cfg.system)
    with torch.no_grad():
        # a textured canonical field and a time-dependent deformation (untrained, both are near constant)
        for p in system.geometry.encoding.parameters():
            p.copy_(torch.randn_like(p))
        for p in [*system.geometry.deformation_pos_encoding.parameters(),
                  *system.geometry.deformation_network.parameters()]:
            p.copy_(torch.randn_like(p) * 0.3)
    system.eval()
    system.renderer.estimator.fill(True)
    from threestudio.data.camera_sampling import orbit_cameras

    cams = orbit_cameras(1, 20.0, 2.0, 40.0, 4, 6)
    rays_o, rays_d = cams["rays_o"].reshape(1, 24, 1, 3), cams["rays_d"].reshape(1, 24, 1, 3)
    times = torch.tensor([0.2] * 10 + [0.7] * 14).reshape(1, 24, 1, 1)
    batch = {"rays_o": rays_o, "rays_d": rays_d, "times": times, "light_positions": cams["light_positions"],
             "bg_color": torch.ones(3)}
    with torch.no_grad():
        merged = system.render(batch)
        parts = []
        for t, sl in ((0.2, slice(0, 10)), (0.7, slice(10, 24))):
            with system.geometry.at_time(t):
                parts.append(system.renderer(rays_o[:, sl], rays_d[:, sl], cams["light_positions"],
                                             bg_color=torch.ones(3)))
    for key in ("comp_rgb", "opacity", "depth"):
        torch.testing.assert_close(merged[key], torch.cat([p[key] for p in parts], dim=1))
    with torch.no_grad():
        with system.geometry.at_time(0.2):
            same_time = system.renderer(rays_o, rays_d, cams["light_positions"], bg_color=torch.ones(3))
    assert not torch.allclose(merged["comp_rgb"][:, 10:], same_time["comp_rgb"][:, 10:])


def _launch(*args: str) -> None:
    spec = importlib.util.spec_from_file_location("launch", os.path.join(REPO, "launch.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main([*args, "trainer.enable_progress_bar=false"]) == 0


def _losses(trial: str) -> list:
    rows = []
    for path in sorted(glob.glob(os.path.join(trial, "csv_logs", "version_*", "metrics.csv"))):
        with open(path) as fp:
            rows += [(int(r["step"]), r["train/loss"], r.get("train/loss_temporal"))
                     for r in csv.DictReader(fp) if r.get("train/loss")]
    return rows


def _metrics(trial: str) -> str:
    return "".join(open(p).read() for p in glob.glob(os.path.join(trial, "csv_logs", "*", "metrics.csv")))


@pytest.mark.slow
def test_tiny_4d_run_video_meshes_resume_and_export(tmp_path):
    data = make_tiny_dataset_4d(str(tmp_path / "data"), size=16, n_views=3, n_holdout_views=1, n_frames=3)
    common = [f"data.dataroot={data}", "data.holdout_views=[3]", "data.holdout_frames=[1]", "data.batch_size=256",
              "data.frames_per_batch=2", "data.n_val_views=1", "data.n_val_frames=2", "data.n_test_views=3",
              "data.n_test_fixed_frames=2", "trainer.log_every_n_steps=1", "checkpoint.every_n_train_steps=1000",
              "system.exporter.isosurface_resolution=24", "system.exporter.texture_size=32",
              "system.exporter.decimate_target_faces=null", "system.exporter.isosurface_threshold=auto",
              f"exp_root_dir={tmp_path}", "use_timestamp=false", *TINY]
    steps = 4
    _launch("--config", CONFIG, "--train", "tag=full", f"trainer.max_steps={steps}",
            f"trainer.val_check_interval={steps}", *common)
    trial = os.path.join(tmp_path, "reconstruction-4d-example", "full")
    save = os.path.join(trial, "save")
    assert os.path.isfile(os.path.join(save, f"it{steps}-val-grid.png"))
    assert os.path.getsize(os.path.join(save, f"it{steps}-test.mp4")) > 500  # the 4D orbit
    assert os.path.getsize(os.path.join(save, f"it{steps}-test-fixed.mp4")) > 500  # the fixed-view clip
    assert len(glob.glob(os.path.join(save, f"it{steps}-test", "*.png"))) == 3
    # held-out pairs: view 3 at every frame, every view at frame 1 (ground truth | render)
    assert len(glob.glob(os.path.join(save, f"it{steps}-heldout", "*.png"))) == 3 + 4 - 1
    export = os.path.join(save, f"it{steps}-export")
    manifest = json.load(open(os.path.join(export, "manifest.json")))
    assert [(f["frame_id"], f["time"]) for f in manifest["frames"]] == [(0, 0.0), (1, 0.5), (2, 1.0)]
    assert manifest["up_axis"] == "y" and manifest["radius"] == 0.75
    for entry in manifest["frames"]:
        for name in ("model.obj", "model.mtl", "texture_kd.png", "model.glb"):
            assert os.path.isfile(os.path.join(export, entry["folder"], name)), (entry["folder"], name)
        mesh = trimesh.load(os.path.join(export, entry["folder"], "model.obj"), process=False, force="mesh")
        assert len(mesh.faces) > 50 and float(abs(mesh.vertices).max()) <= 0.75 + 1e-4  # the exporter's box
    metrics = _metrics(trial)
    for key in ("test/psnr", "test/psnr_novel_view", "test/psnr_novel_frame", "val/psnr", "train/loss_temporal"):
        assert key in metrics, key

    # resume: 2 steps, then resumed to 4, equals the uninterrupted run bit for bit
    _launch("--config", CONFIG, "--train", "tag=part", "trainer.max_steps=2", "trainer.val_check_interval=2",
            "system.export_after_test=false", "data.test_heldout=false", *common)
    part = os.path.join(tmp_path, "reconstruction-4d-example", "part")
    _launch("--config", os.path.join(part, "configs", "parsed.yaml"), "--train",
            f"resume={os.path.join(part, 'ckpts', 'last.ckpt')}", f"trainer.max_steps={steps}",
            f"trainer.val_check_interval={steps}")
    a = torch.load(os.path.join(trial, "ckpts", "last.ckpt"), map_location="cpu", weights_only=True)
    b = torch.load(os.path.join(part, "ckpts", "last.ckpt"), map_location="cpu", weights_only=True)
    assert b["global_step"] == steps
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    assert _losses(part) == _losses(trial) and len(_losses(trial)) == steps

    # --export from the checkpoint with a frame selection
    _launch("--config", os.path.join(trial, "configs", "parsed.yaml"), "--export",
            f"resume={os.path.join(trial, 'ckpts', 'last.ckpt')}", "system.export_frames=[2]")
    first_manifest = open(os.path.join(export, "manifest.json")).read()  # the training's export is kept
    assert len(json.loads(first_manifest)["frames"]) == 3
    manifest = json.load(open(os.path.join(save, f"it{steps}.2-export", "manifest.json")))
    assert [f["folder"] for f in manifest["frames"]] == ["frame_02"]
