"""Marching cubes on a dense field sampled in a box (PyMCubes), and the small mesh it returns."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import torch


@dataclass
class IsosurfaceMesh:
    """Triangle mesh in world coordinates: `vertices` (V, 3) float32, `faces` (F, 3) int64, counter-clockwise
    seen from outside (normals point away from the high-density side)."""

    vertices: torch.Tensor
    faces: torch.Tensor
    extras: dict[str, Any] = field(default_factory=dict)

    # threestudio's Mesh attribute names
    @property
    def v_pos(self) -> torch.Tensor:
        return self.vertices

    @property
    def t_pos_idx(self) -> torch.Tensor:
        return self.faces

    def face_normals(self) -> torch.Tensor:
        v = self.vertices[self.faces]
        n = torch.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0], dim=-1)
        return torch.nn.functional.normalize(n, dim=-1)

    def remove_small_components(self, min_faces: float) -> "IsosurfaceMesh":
        """Drop connected components with fewer faces than `min_faces` (a fraction of all faces if < 1)."""
        if self.faces.shape[0] == 0:
            return self
        import scipy.sparse
        import scipy.sparse.csgraph

        faces = self.faces.cpu().numpy()
        n_v = self.vertices.shape[0]
        rows = np.concatenate([faces[:, 0], faces[:, 1]])
        cols = np.concatenate([faces[:, 1], faces[:, 2]])
        graph = scipy.sparse.coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n_v, n_v))
        _, labels = scipy.sparse.csgraph.connected_components(graph, directed=False)
        face_labels = labels[faces[:, 0]]
        counts = np.bincount(face_labels)
        threshold = min_faces * faces.shape[0] if min_faces < 1 else min_faces
        keep = counts[face_labels] >= threshold
        return _compact(self.vertices, self.faces[torch.from_numpy(keep)], self.extras)


def _compact(vertices: torch.Tensor, faces: torch.Tensor, extras: dict) -> IsosurfaceMesh:
    used = torch.unique(faces.reshape(-1))
    remap = torch.full((vertices.shape[0],), -1, dtype=torch.int64)
    remap[used] = torch.arange(used.numel())
    return IsosurfaceMesh(vertices[used], remap[faces], dict(extras))


def marching_cubes(volume: torch.Tensor, threshold: float, bbox: torch.Tensor) -> IsosurfaceMesh:
    """Surface where `volume` (R, R, R), sampled at the vertices of a grid spanning `bbox` (2, 3) with
    index order (x, y, z), crosses `threshold`; the inside is where the volume is larger."""
    try:
        import mcubes
    except ImportError as e:  # pragma: no cover - PyMCubes is a pinned requirement
        raise ImportError("Isosurface extraction needs PyMCubes: pip install PyMCubes") from e
    res = np.array(volume.shape, dtype=np.float64)
    verts, faces = mcubes.marching_cubes(volume.detach().cpu().numpy().astype(np.float64), float(threshold))
    bbox = bbox.detach().cpu().to(torch.float64)
    vertices = torch.from_numpy(verts) / torch.from_numpy(res - 1) * (bbox[1] - bbox[0]) + bbox[0]
    # PyMCubes winds triangles counter-clockwise seen from the low side: normals point outwards
    faces_t = torch.from_numpy(faces.astype(np.int64))
    return IsosurfaceMesh(vertices.to(torch.float32), faces_t, {"bbox": bbox.to(torch.float32)})


def sample_grid(fn: Callable[[torch.Tensor], torch.Tensor], resolution: int, bbox: torch.Tensor,
                chunk: int = 0, device: Optional[torch.device] = None) -> torch.Tensor:
    """Evaluate `fn` ((N, 3) -> (N, 1) or (N,)) on the resolution^3 grid vertices spanning bbox; (R, R, R)."""
    if resolution < 2:
        raise ValueError(f"The grid resolution must be at least 2, got {resolution}.")
    device = device or bbox.device
    axes = [torch.linspace(float(bbox[0, d]), float(bbox[1, d]), resolution, device=device) for d in range(3)]
    out = torch.empty(resolution ** 3, dtype=torch.float32, device=device)
    # evaluate slab by slab (along x) so memory stays bounded even without chunking
    slab = resolution * resolution
    step = max(1, chunk // slab) if chunk > 0 else max(1, (1 << 20) // slab)
    yy, zz = torch.meshgrid(axes[1], axes[2], indexing="ij")
    yz = torch.stack([yy.reshape(-1), zz.reshape(-1)], dim=-1)
    for i in range(0, resolution, step):
        xs = axes[0][i:i + step]
        pts = torch.cat([xs.repeat_interleave(slab)[:, None], yz.repeat(len(xs), 1)], dim=-1)
        out[i * slab:(i + len(xs)) * slab] = fn(pts).reshape(-1).float()
    return out.view(resolution, resolution, resolution)
