"""mesh-exporter on analytic fields: watertight isosurface, baked colours, GLB round trip, clear errors."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import trimesh

from threestudio.models.exporters.isosurface import ExportError, fill_cavities, marching_cubes, otsu_threshold
from threestudio.models.exporters.mesh_io import Z_UP_TO_Y_UP, file_up_axis, load_world_mesh
from threestudio.models.exporters.texture_baking import fill_empty_texels, rasterize_uv_numpy, sample_texture
from threestudio.utils.base import build_module

from reconstruction_test_helpers import IdentityMaterial, SphereField

RES = 48
VOXEL = 2.0 / (RES - 1)


def exporter(geometry=None, **cfg):
    base = {"isosurface_resolution": RES, "texture_size": 256, "decimate_target_faces": None}
    base.update(cfg)
    return build_module("mesh-exporter", base, "system.exporter", geometry=geometry or SphereField(),
                        material=IdentityMaterial())


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("export"))
    files = exporter(save_vertex_color_ply=True)(out)
    assert sorted(os.path.basename(f) for f in files) == sorted(
        ["model.obj", "model.mtl", "texture_kd.png", "model.glb", "model_vertex_color.ply"])
    return out


def test_sphere_isosurface_is_watertight_with_subvoxel_radius_error(exported):
    mesh = load_world_mesh(os.path.join(exported, "model.obj"))
    mesh.merge_vertices(merge_tex=True, merge_norm=True)  # join the copies made along UV seams
    assert mesh.is_watertight and mesh.volume > 0  # closed, outward-facing
    expected = SphereField().iso_radius(25.0)
    radius_error = np.abs(np.linalg.norm(mesh.vertices, axis=-1) - expected)
    assert radius_error.max() < VOXEL
    assert radius_error.max() > 1e-5  # the test can fail: vertices are really checked


def test_baked_texture_reproduces_the_colour_field(exported):
    mesh = load_world_mesh(os.path.join(exported, "model.obj"))
    texture = np.asarray(mesh.visual.material.image.convert("RGB"), dtype=np.float64) / 255.0
    points, faces = trimesh.sample.sample_surface(mesh, 5000, seed=0)
    bary = trimesh.triangles.points_to_barycentric(mesh.triangles[faces], points)
    uv = np.einsum("nk,nkc->nc", bary, mesh.visual.uv[mesh.faces[faces]])
    baked = sample_texture(texture, uv)
    truth = SphereField.color(torch.as_tensor(points)).numpy()
    assert np.abs(baked - truth).mean() < 0.01
    assert np.abs(baked - truth).max() < 0.05


def test_glb_round_trips_through_trimesh(exported):
    obj = trimesh.load(os.path.join(exported, "model.obj"), process=False)
    glb = trimesh.load(os.path.join(exported, "model.glb"), force="mesh", process=False)
    assert len(glb.faces) == len(obj.faces)
    # OBJ and GLB share one up axis (y by default), so their raw coordinates agree
    assert file_up_axis(os.path.join(exported, "model.obj")) == file_up_axis(os.path.join(exported, "model.glb")) == "y"
    np.testing.assert_allclose(glb.vertices, obj.vertices, atol=1e-5)
    # written y-up; rotate back into the z-up world: the sphere's colour field is in world coordinates
    back = trimesh.transform_points(glb.vertices, np.linalg.inv(Z_UP_TO_Y_UP))
    texture = np.asarray(glb.visual.material.baseColorTexture.convert("RGB"), dtype=np.float64) / 255.0
    colors = sample_texture(texture, np.asarray(glb.visual.uv))
    truth = SphereField.color(torch.as_tensor(back)).numpy()
    assert np.abs(colors - truth).mean() < 0.01


def test_vertex_color_ply(exported):
    ply = trimesh.load(os.path.join(exported, "model_vertex_color.ply"), process=False)
    colors = ply.visual.vertex_colors[:, :3] / 255.0
    truth = SphereField.color(torch.as_tensor(np.asarray(ply.vertices))).numpy()
    assert np.abs(colors - truth).max() < 0.01


def test_empty_isosurface_gives_a_clear_error(tmp_path):
    with pytest.raises(ExportError, match=r"Empty isosurface.*never crosses isosurface_threshold=500"):
        exporter(isosurface_threshold=500.0)(str(tmp_path))
    assert not os.path.exists(tmp_path / "model.obj")


def test_auto_threshold_and_decimation(tmp_path):
    pytest.importorskip("fast_simplification")
    grid = np.zeros((8, 8, 8), np.float32)
    grid[2:6, 2:6, 2:6] = 200.0
    assert 0.0 < otsu_threshold(grid) < 200.0
    ex = exporter(isosurface_threshold="auto", decimate_target_faces=500)
    vertices, faces = ex.extract_mesh()
    assert len(faces) <= 520
    radius = np.linalg.norm(vertices, axis=-1)
    assert np.abs(radius - 0.5).max() < 2 * VOXEL


def test_cavities_are_filled_and_floaters_removed():
    axis = np.linspace(-1, 1, RES)
    x, y, z = np.meshgrid(axis, axis, axis, indexing="ij")
    r = np.sqrt(x ** 2 + y ** 2 + z ** 2)
    shell = ((r < 0.6) & (r > 0.3)).astype(np.float32) * 100  # hollow ball
    floater = (np.sqrt((x - 0.8) ** 2 + y ** 2 + z ** 2) < 0.08).astype(np.float32) * 100
    grid = shell + floater
    from threestudio.models.exporters.isosurface import remove_floaters

    v, f = marching_cubes(grid, 50.0, 1.0)
    assert trimesh.Trimesh(v, f).body_count == 3  # outer, inner shell, floater
    v, f = marching_cubes(fill_cavities(grid, 50.0), 50.0, 1.0)
    assert trimesh.Trimesh(v, f).body_count == 2
    v, f = remove_floaters(v, f, 0.05)
    mesh = trimesh.Trimesh(v, f)
    assert mesh.body_count == 1 and np.linalg.norm(v, axis=-1).max() < 0.6 + VOXEL


def test_pockets_behind_a_pinhole_are_filled_with_cavity_passage():
    axis = np.linspace(-1, 1, RES)
    x, y, z = np.meshgrid(axis, axis, axis, indexing="ij")
    r = np.sqrt(x ** 2 + y ** 2 + z ** 2)
    inside = (r < 0.6) & (r > 0.3)  # a hollow ball whose shell has a one-voxel pinhole on the +x axis
    mid = RES // 2
    inside[mid:, mid, mid] = False
    # and a notch 5 voxels wide cut into the outside along -x: open space, it must stay
    notch = (x < -0.45) & (np.abs(y) < 2.5 * VOXEL) & (np.abs(z) < 2.5 * VOXEL)
    inside &= ~notch
    grid = inside.astype(np.float32) * 100
    assert (fill_cavities(grid, 50.0) == grid).all()  # not enclosed: nothing filled, the inner shell stays
    filled = fill_cavities(grid, 50.0, passage=1)
    assert (filled[r < 0.25] > 50).all()  # the pocket behind the pinhole
    assert (filled[notch & (r < 0.6)] < 50).all()  # the wide notch open to the outside
    assert (filled[r > 0.65] < 50).all()
    v, f = marching_cubes(filled, 50.0, 1.0)
    assert trimesh.Trimesh(v, f).body_count == 1


def test_free_level_fills_pockets_behind_fog_only():
    # a hollow ball whose cavity reaches the outside through a channel: foggy (between the two levels) in one
    # grid, really empty in the other. Only free space below free_level connects the pocket to the outside.
    axis = np.linspace(-1, 1, RES)
    x, y, z = np.meshgrid(axis, axis, axis, indexing="ij")
    r = np.sqrt(x ** 2 + y ** 2 + z ** 2)
    shell = ((r < 0.6) & (r > 0.3)).astype(np.float32) * 100
    channel = (np.sqrt(y ** 2 + z ** 2) < 0.1) & (x > 0) & (r < 0.6)
    foggy, empty = shell.copy(), shell.copy()
    foggy[channel], empty[channel] = 20.0, 0.0

    def inner_radius(grid):
        v, _ = marching_cubes(grid, 50.0, 1.0)
        return np.linalg.norm(v, axis=-1).min()

    assert inner_radius(fill_cavities(foggy, 50.0)) < 0.35  # the pocket is open: an inner surface
    assert inner_radius(fill_cavities(foggy, 50.0, free_level=5.0)) > 0.6 - 2 * VOXEL  # one solid ball
    assert inner_radius(fill_cavities(empty, 50.0, free_level=5.0)) < 0.35  # seen-empty space stays open


def test_uv_rasteriser_covers_and_interpolates():
    # two triangles covering the whole UV square: every texel is covered, barycentrics reproduce its centre
    uv = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=np.float64)
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    size = 16
    face_index, bary = rasterize_uv_numpy(uv, faces, size)
    assert (face_index >= 0).all()
    interp = np.einsum("hwk,hwkc->hwc", bary, uv[faces[face_index]])
    rows, cols = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    np.testing.assert_allclose(interp[..., 0], (cols + 0.5) / size, atol=1e-6)
    np.testing.assert_allclose(interp[..., 1], 1 - (rows + 0.5) / size, atol=1e-6)
    # a small triangle leaves texels empty; filling copies the nearest covered colour
    face_index, _ = rasterize_uv_numpy(uv[[0, 1, 3]] * 0.5, np.array([[0, 1, 2]]), size)
    covered = face_index >= 0
    assert 0 < covered.sum() < size * size
    texture = np.where(covered[..., None], 1.0, 0.0)
    assert (fill_empty_texels(texture, covered) == 1.0).all()


def test_decimation_uses_the_aggressiveness_and_falls_back_when_it_stops_short(monkeypatch, caplog):
    """decimate_aggressiveness reaches fast-simplification (3 keeps a smooth refined mesh's shape better than
    its default 7); a low value can stop short of the target, and then 7 is used."""
    import logging

    import fast_simplification

    from threestudio.models.exporters.isosurface import decimate

    axis = np.linspace(-1, 1, 64)
    x, y, z = np.meshgrid(axis, axis, axis, indexing="ij")
    v, f = marching_cubes((np.sqrt(x ** 2 + y ** 2 + z ** 2) < 0.7).astype(np.float32) * 100, 50.0, 1.0)
    calls = []
    original = fast_simplification.simplify

    def recording(*args, **kwargs):
        out = original(*args, **kwargs)
        calls.append((kwargs["agg"], len(out[1])))
        return out

    monkeypatch.setattr(fast_simplification, "simplify", recording)
    dv, df = decimate(v, f, 8000, aggressiveness=3.0)  # a 2.3x reduction: reached with 3
    assert [agg for agg, _ in calls] == [3.0] and len(df) <= 8000
    calls.clear()
    with caplog.at_level(logging.INFO, logger="threestudio"):
        dv, df = decimate(v, f, 1000, aggressiveness=3.0)  # 18x: 3 stops at about 3k faces, 7 gets there
    assert [agg for agg, _ in calls] == [3.0, 7.0] and calls[0][1] > 1100 and len(df) <= 1000
    assert "stopped at" in caplog.text
    assert np.abs(np.linalg.norm(dv, axis=-1) - 0.7).max() < 3 * 2 / 63  # still the sphere (in [-1, 1]^3)
    with pytest.raises(Exception, match="system.exporter.decimate_aggressiveness"):
        exporter(decimate_aggressiveness=11)
