"""Exported OBJ/GLB files: one up axis, smooth normals, unlit option, manifold repair, glTF validity."""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pytest
import trimesh

from threestudio.models.exporters.mesh_cleanup import non_manifold_edge_count, repair_manifold
from threestudio.models.exporters.mesh_io import _glb_chunks, file_up_axis, load_world_mesh, write_glb, write_textured_obj
from threestudio.utils.base import build_module
from threestudio.utils.config import ConfigError

from reconstruction_test_helpers import IdentityMaterial, SphereField

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _export(out: str, **cfg) -> str:
    base = {"isosurface_resolution": 40, "texture_size": 128, "decimate_target_faces": None}
    base.update(cfg)
    # a soft density edge: marching cubes places vertices precisely, so the normals can be checked tightly
    build_module("mesh-exporter", base, "system.exporter", geometry=SphereField(sharpness=20.0),
                 material=IdentityMaterial())(out)
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> str:
    return _export(str(tmp_path_factory.mktemp("files")), unlit=True)


def _asymmetric_mesh():
    # a tetrahedron that is not symmetric under the y/z swap, with a trivial texture
    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 2]], np.float32)
    faces = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    uv = np.array([[0, 0], [1, 0], [0, 1], [1, 1]], np.float32)
    return vertices, faces, uv, np.full((4, 4, 3), 0.5, np.float32)


@pytest.mark.parametrize("up_axis", ["y", "z"])
def test_obj_and_glb_share_the_up_axis_and_load_back_into_the_world(tmp_path, up_axis):
    vertices, faces, uv, texture = _asymmetric_mesh()
    obj = write_textured_obj(str(tmp_path), vertices, faces, uv, texture, up_axis=up_axis)[0]
    glb = write_glb(str(tmp_path / "model.glb"), vertices, faces, uv, texture, up_axis=up_axis)
    raw_obj = trimesh.load(obj, process=False).vertices
    raw_glb = trimesh.load(glb, force="mesh", process=False).vertices
    np.testing.assert_allclose(raw_obj, raw_glb, atol=1e-5)
    # y-up: the world's +z (height 2) becomes the file's +y
    height_axis = 1 if up_axis == "y" else 2
    assert raw_obj[:, height_axis].max() == pytest.approx(2.0)
    for path in (obj, glb):
        assert file_up_axis(path) == up_axis
        np.testing.assert_allclose(load_world_mesh(path).vertices, vertices, atol=1e-5)


def test_smooth_unit_outward_normals_in_both_files(exported):
    obj = trimesh.load(os.path.join(exported, "model.obj"), process=False)
    with open(os.path.join(exported, "model.obj")) as fp:
        assert sum(line.startswith("vn ") for line in fp) == len(obj.vertices)
    world = obj  # a rotation of the world: radial directions and normals rotate together
    normals = np.asarray(world.vertex_normals)
    np.testing.assert_allclose(np.linalg.norm(normals, axis=-1), 1.0, atol=1e-3)
    radial = world.vertices / np.linalg.norm(world.vertices, axis=-1, keepdims=True)
    cosine = (normals * radial).sum(-1)
    assert cosine.mean() > 0.995 and cosine.min() > 0.8  # outward and close to a sphere's radial normals
    # smooth across UV seams: the copies of one position carry one normal
    _, first, inverse = np.unique(np.round(world.vertices, 5), axis=0, return_index=True, return_inverse=True)
    assert len(first) < len(world.vertices)  # there are seams
    np.testing.assert_allclose(normals, normals[first][inverse.reshape(-1)], atol=1e-4)
    with open(os.path.join(exported, "model.glb"), "rb") as fp:
        document, _ = _glb_chunks(fp.read())
    assert "NORMAL" in document["meshes"][0]["primitives"][0]["attributes"]


def test_unlit_extension_is_declared_and_optional(exported, tmp_path):
    with open(os.path.join(exported, "model.glb"), "rb") as fp:
        document, _ = _glb_chunks(fp.read())
    assert "KHR_materials_unlit" in document["extensionsUsed"]
    assert all("KHR_materials_unlit" in m.get("extensions", {}) for m in document["materials"])
    vertices, faces, uv, texture = _asymmetric_mesh()
    with open(write_glb(str(tmp_path / "lit.glb"), vertices, faces, uv, texture), "rb") as fp:
        document, _ = _glb_chunks(fp.read())
    assert "extensionsUsed" not in document or "KHR_materials_unlit" not in document["extensionsUsed"]


def test_repair_makes_a_pinched_mesh_manifold_and_closed():
    # two spheres, one with a pinhole and a doubled face (its edges are shared by 4 faces): open, non-manifold
    a = trimesh.creation.icosphere(2, radius=0.5)
    b = a.copy()
    b.apply_translation([1.5, 0, 0])
    vertices = np.concatenate([a.vertices, b.vertices])
    faces = np.concatenate([a.faces[3:], b.faces + len(a.vertices)])  # pinhole in a
    shared = faces[:1].copy()
    faces = np.concatenate([faces, shared, shared[:, ::-1]])  # an edge used by 4 faces
    assert non_manifold_edge_count(faces) > 0
    v, f = repair_manifold(vertices, faces)
    mesh = trimesh.Trimesh(v, f, process=False)
    assert non_manifold_edge_count(f) == 0 and mesh.is_watertight
    assert mesh.body_count == 2  # both parts kept
    assert mesh.volume == pytest.approx(a.volume + b.volume, rel=0.05)


def test_exporter_output_is_manifold(exported):
    mesh = load_world_mesh(os.path.join(exported, "model.obj"))
    mesh.merge_vertices(merge_tex=True, merge_norm=True)
    assert mesh.is_watertight and non_manifold_edge_count(np.asarray(mesh.faces)) == 0


def test_bad_up_axis_is_a_config_error():
    with pytest.raises(ConfigError, match="system.exporter.up_axis"):
        build_module("mesh-exporter", {"up_axis": "x"}, "system.exporter", geometry=SphereField(),
                     material=IdentityMaterial())


def test_glb_passes_the_khronos_gltf_validator(exported):
    node = shutil.which("node")
    assert node, "node is needed for the glTF validator (README install command: npm ci)"
    assert os.path.isdir(os.path.join(ROOT, "node_modules", "gltf-validator")), \
        "gltf-validator is missing: run the README install command (npm ci)"
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gltf_validate.js")
    result = subprocess.run([node, script, os.path.join(exported, "model.glb")], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["issues"]["numErrors"] == 0, report["issues"]["messages"][:10]
    assert report["issues"]["numWarnings"] == 0, report["issues"]["messages"][:10]
    assert report["info"]["totalVertexCount"] > 100
