"""Quality of a textured mesh against an analytic `procedural_scene.Scene`: Chamfer-L1 and texture colour error.

Chamfer-L1 = ½ (mean distance from points on the mesh to the true surface + mean distance from points on
the true surface to the mesh), with area-uniform samples on both. Colour error = mean absolute difference
(over points and RGB channels, colours in [0,1]) between the true surface colour at a true-surface point
and the mesh texture at the closest mesh point.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import numpy as np
import trimesh
from scipy.spatial import cKDTree

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from procedural_scene import Scene  # noqa: E402


@dataclass
class MeshQuality:
    chamfer_l1: float
    accuracy: float  # mesh -> true surface
    completeness: float  # true surface -> mesh
    color_error: float  # NaN when the mesh has no texture
    # mean angle (degrees) between the true surface normal at a true-surface point and the normal of the
    # closest mesh face (mesh faces wound counter-clockwise from outside)
    normal_error_deg: float = float("nan")


def _texture_lookup(mesh: trimesh.Trimesh):
    """uv (V,2) and an (S,S,3) float texture of a loaded textured mesh, or (None, None)."""
    visual = getattr(mesh, "visual", None)
    uv = getattr(visual, "uv", None)
    material = getattr(visual, "material", None)
    image = getattr(material, "image", None) or getattr(material, "baseColorTexture", None)
    if uv is None or image is None:
        return None, None
    return np.asarray(uv, dtype=np.float64), np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0


def closest_points_on_mesh(mesh: trimesh.Trimesh, queries: np.ndarray, k: int = 12, n_samples: int = 1_000_000,
                           seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Closest mesh point, its face and distance for each query: candidate faces from the k nearest of a dense
    surface sampling, then exact point-triangle distances (trimesh.triangles.closest_point)."""
    samples, sample_faces = trimesh.sample.sample_surface(mesh, n_samples, seed=seed)
    tree = cKDTree(samples)
    _, idx = tree.query(queries, k=k)
    candidates = sample_faces[idx]  # (Q,k)
    best_d = np.full(len(queries), np.inf)
    best_p = np.zeros_like(queries)
    best_f = np.zeros(len(queries), dtype=np.int64)
    triangles = mesh.triangles
    for j in range(k):
        faces = candidates[:, j]
        p = trimesh.triangles.closest_point(triangles[faces], queries)
        d = np.linalg.norm(p - queries, axis=-1)
        better = d < best_d
        best_d[better], best_p[better], best_f[better] = d[better], p[better], faces[better]
    return best_p, best_f, best_d


def distance_to_scene(scene: Scene, points: np.ndarray, surface_tree: cKDTree) -> np.ndarray:
    """Distance to the union's surface: exact outside (min of exact SDFs), dense-sample bound inside."""
    sdf = scene.sdf(points)
    inside = sdf < 0
    out = np.abs(sdf)
    if inside.any():
        out[inside] = surface_tree.query(points[inside])[0]
    return out


def true_normals(scene: Scene, points: np.ndarray, owners: np.ndarray, eps: float = 1e-4) -> np.ndarray:
    """Unit outward normals of the owning primitives at surface points (central differences of their SDFs)."""
    normals = np.zeros_like(points)
    for index, prim in enumerate(scene.primitives):
        sel = owners == index
        if not sel.any():
            continue
        p = points[sel]
        grad = np.stack([prim.sdf(p + eps * e) - prim.sdf(p - eps * e) for e in np.eye(3)], axis=-1)
        normals[sel] = grad / np.maximum(np.linalg.norm(grad, axis=-1, keepdims=True), 1e-12)
    return normals


def evaluate_mesh(mesh: trimesh.Trimesh, scene: Scene, n_points: int = 100_000, seed: int = 0) -> MeshQuality:
    """Chamfer-L1 (world units) and texture colour error of `mesh` (z-up world) against `scene`."""
    dense, _ = scene.sample_surface(2_000_000, seed=seed + 1)
    tree = cKDTree(dense)
    mesh_points, _ = trimesh.sample.sample_surface(mesh, n_points, seed=seed)
    accuracy = float(distance_to_scene(scene, np.asarray(mesh_points), tree).mean())
    true_points, owners = scene.sample_surface(n_points, seed=seed + 2)
    closest, faces, dist = closest_points_on_mesh(mesh, true_points)
    completeness = float(dist.mean())
    cos = np.sum(np.asarray(mesh.face_normals)[faces] * true_normals(scene, true_points, owners), axis=-1)
    normal_error = float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))).mean())
    uv, texture = _texture_lookup(mesh)
    color_error = float("nan")
    if uv is not None:
        from threestudio.models.exporters.texture_baking import sample_texture

        tri = mesh.triangles[faces]
        bary = trimesh.triangles.points_to_barycentric(tri, closest)
        uv_points = np.einsum("nk,nkc->nc", bary, uv[mesh.faces[faces]])
        predicted = sample_texture(texture, uv_points)
        truth = scene.color_at(true_points, owners)
        color_error = float(np.abs(predicted - truth).mean())
    return MeshQuality(0.5 * (accuracy + completeness), accuracy, completeness, color_error, normal_error)
