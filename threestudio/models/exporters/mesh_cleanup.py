"""Mesh clean-up after extraction: manifold repair and smooth vertex normals."""
from __future__ import annotations

import logging

import numpy as np
import trimesh

logger = logging.getLogger(__name__)


def non_manifold_edge_count(faces: np.ndarray) -> int:
    """Edges shared by more than two faces (F,3 faces)."""
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    return int((counts > 2).sum())


def repair_manifold(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Watertight, 2-manifold version of a mesh (V,3), (F,3) by MeshFix (pymeshfix): removes non-manifold and
    self-intersecting faces and fills the holes that leaves. Every connected component is kept. Returns the input
    unchanged (with a warning) if the repair would lose most of the surface."""
    import pymeshfix

    # MeshFix keeps only the largest component of what it is given: repair the components one by one
    pieces_v, pieces_f, offset = [], [], 0
    for part in trimesh.Trimesh(vertices, faces, process=False).split(only_watertight=False):
        if len(part.faces) < 4:
            continue
        fixer = pymeshfix.MeshFix(np.asarray(part.vertices, np.float64), np.asarray(part.faces, np.int32))
        fixer.repair(joincomp=False, remove_smallest_components=False)
        pieces_v.append(np.asarray(fixer.points))
        pieces_f.append(np.asarray(fixer.faces, np.int64) + offset)
        offset += len(pieces_v[-1])
    if not pieces_f:
        return vertices, faces
    new_vertices, new_faces = np.concatenate(pieces_v), np.concatenate(pieces_f)
    before = trimesh.Trimesh(vertices, faces, process=False).area
    after = trimesh.Trimesh(new_vertices, new_faces, process=False).area if len(new_faces) else 0.0
    if after < 0.5 * before:
        logger.warning("manifold repair would drop %.0f%% of the surface area; keeping the unrepaired mesh",
                       100 * (1 - after / max(before, 1e-12)))
        return vertices, faces
    logger.info("manifold repair: %d -> %d faces", len(faces), len(new_faces))
    return new_vertices.astype(np.float32), new_faces


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(V,3) unit, area-weighted vertex normals of an outward-facing mesh."""
    return np.asarray(trimesh.Trimesh(vertices, faces, process=False).vertex_normals, dtype=np.float32)
