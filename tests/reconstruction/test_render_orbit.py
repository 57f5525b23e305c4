"""scripts/render_orbit.py: an exported GLB/OBJ rendered to an orbit round-trips through the reconstruction
data module (cameras, masks and colours agree with the analytic object)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import trimesh

from threestudio.models.exporters.mesh_io import write_glb, write_textured_obj
from threestudio.models.exporters.texture_baking import fill_empty_texels, rasterize_uv, uv_unwrap

from reconstruction_test_helpers import REPO, load_script

RADIUS = 0.5


def color_of(points: np.ndarray) -> np.ndarray:
    return np.clip(points / (2 * RADIUS) + 0.5, 0, 1)


def textured_sphere(out_dir: str) -> tuple[str, str]:
    """A UV-unwrapped icosphere whose texture colour is color_of(position); written as GLB (y-up) and OBJ."""
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=RADIUS)
    uvm = uv_unwrap(np.asarray(sphere.vertices, np.float32), np.asarray(sphere.faces), 256, 2)
    face_index, bary = rasterize_uv(uvm.uv, uvm.faces, 256, "cpu")
    covered = face_index >= 0
    points = np.einsum("nk,nkc->nc", bary[covered], uvm.vertices[uvm.faces[face_index[covered]]])
    texture = np.zeros((256, 256, 3), np.float32)
    texture[covered] = color_of(points)
    texture = fill_empty_texels(texture, covered)
    glb = write_glb(os.path.join(out_dir, "sphere.glb"), uvm.vertices, uvm.faces, uvm.uv, texture)
    obj = write_textured_obj(out_dir, uvm.vertices, uvm.faces, uvm.uv, texture, "sphere")[0]
    return glb, obj


def ray_sphere(rays_o: torch.Tensor, rays_d: torch.Tensor, radius: float) -> tuple[torch.Tensor, torch.Tensor]:
    b = (rays_o * rays_d).sum(-1)
    c = (rays_o * rays_o).sum(-1) - radius ** 2
    disc = b * b - c
    t = -b - disc.clamp(min=0).sqrt()
    return disc > 0, rays_o + t[..., None] * rays_d


@pytest.mark.parametrize("fmt", ["glb", "obj"])
def test_render_orbit_round_trips_through_the_data_module(tmp_path, fmt):
    glb, obj = textured_sphere(str(tmp_path))
    out = tmp_path / f"orbit_{fmt}"
    render_orbit = load_script("render_orbit")
    render_orbit.main([glb if fmt == "glb" else obj, "--views", "4", "--elevation", "20", "--res", "48",
                       "--out", str(out), "--backend", "cpu", "--meta", str(tmp_path / "all.jsonl")])
    meta = [json.loads(line) for line in open(out / "svd_meta.jsonl")]
    assert len(meta) == 1 and meta[0]["elevation"] == [20.0] * 4 and len(meta[0]["image_path"]) == 4
    assert all(os.path.isfile(p) for p in meta[0]["image_path"])
    assert open(tmp_path / "all.jsonl").read().strip() == open(out / "svd_meta.jsonl").read().strip()
    transforms = json.load(open(out / "transforms.json"))
    assert [f["azimuth"] for f in transforms["frames"]] == [90.0, 180.0, 270.0, 0.0]  # last = input view

    import threestudio

    dm = threestudio.find("multiview-image-datamodule")({"dataroot": str(out), "n_val_views": 1})
    views = dm.train_views
    assert len(views) == 4 and views.height == 48 and views.has_mask
    from threestudio.data.multiview_images import _rays_of

    rays_o, rays_d = _rays_of(views)
    hit, points = ray_sphere(rays_o, rays_d, RADIUS)
    mask = views.masks[..., 0] > 0.5
    # the icosphere is inscribed in the analytic sphere: disagreement only along the silhouette
    agree = (hit == mask).float().mean()
    assert agree > 0.98, agree
    inner, _ = ray_sphere(rays_o, rays_d, RADIUS * 0.97)
    predicted = torch.from_numpy(color_of(points.numpy())).float()
    err = (views.images - predicted).abs()[inner & mask].mean()
    assert err < 0.03, err
    # alpha is antialiased: some pixels are partly covered
    partial = ((views.masks > 0.05) & (views.masks < 0.95)).float().mean()
    assert partial > 0.002


def test_render_orbit_cli_refuses_to_overwrite(tmp_path):
    glb, _ = textured_sphere(str(tmp_path))
    out = tmp_path / "orbit"
    cmd = [sys.executable, os.path.join(REPO, "scripts", "render_orbit.py"), glb, "--views", "2", "--res", "16",
           "--out", str(out)]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert second.returncode != 0 and "already holds an orbit" in second.stderr
    missing = subprocess.run(cmd[:2] + [str(tmp_path / "nope.glb"), "--out", str(tmp_path / "x")],
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode != 0 and "no mesh file" in missing.stderr
