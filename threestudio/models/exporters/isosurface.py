"""Density field -> triangle mesh: the project's one mesh extraction path.

Sampling the field on a grid, the threshold ("auto" = Otsu split of the log-density histogram),
cavity filling, marching cubes (closed, outward-facing), floater removal and decimation. The mesh
exporter, `BaseImplicitGeometry.isosurface()` and `extract_color_mesh.py` all go through
`extract_isosurface`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import numpy as np
import torch
import trimesh
from torch import Tensor

logger = logging.getLogger(__name__)


class ExportError(ValueError):
    """The field cannot be turned into a mesh (e.g. nothing above the isosurface threshold)."""


Bounds = Union[float, Tensor, np.ndarray]


def box_bounds(bounds: Bounds) -> np.ndarray:
    """(2, 3) float64 [min corner, max corner]: a float r means the cube [-r, r]^3."""
    if isinstance(bounds, (int, float)):
        r = float(bounds)
        return np.array([[-r, -r, -r], [r, r, r]], dtype=np.float64)
    box = (bounds.detach().cpu().numpy() if isinstance(bounds, Tensor) else np.asarray(bounds)).astype(np.float64)
    if box.shape != (2, 3) or not (box[1] > box[0]).all():
        raise ValueError(f"bounds must be a radius or a (2, 3) box [min, max] with min < max, got {box.tolist()}.")
    return box


@dataclass
class IsosurfaceMesh:
    """Triangle mesh in world coordinates: `vertices` (V, 3) float32, `faces` (F, 3) int64, counter-clockwise
    seen from outside; `extras` holds e.g. the threshold used."""

    vertices: Tensor
    faces: Tensor
    extras: dict[str, Any] = field(default_factory=dict)

    # threestudio's Mesh attribute names
    @property
    def v_pos(self) -> Tensor:
        return self.vertices

    @property
    def t_pos_idx(self) -> Tensor:
        return self.faces

    def face_normals(self) -> Tensor:
        """(F, 3) unit normals, pointing outwards."""
        v = self.vertices[self.faces]
        n = torch.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0], dim=-1)
        return torch.nn.functional.normalize(n, dim=-1)


@torch.no_grad()
def sample_density_grid(density_fn: Callable[[Tensor], Tensor], resolution: int, bounds: Bounds,
                        chunk: int = 262144, device: Optional[torch.device] = None) -> np.ndarray:
    """(R,R,R) float32 field at the vertices of a grid spanning `bounds`, evaluated in chunks.

    Index order (x, y, z): `grid[i, j, k]` is at `lo + (i, j, k) / (R - 1) * (hi - lo)`."""
    if resolution < 2:
        raise ValueError(f"The grid resolution must be at least 2, got {resolution}.")
    box = box_bounds(bounds)
    axes = [torch.linspace(float(box[0, d]), float(box[1, d]), resolution) for d in range(3)]
    out = np.empty(resolution ** 3, dtype=np.float32)
    # one x-slab of points at a time keeps memory at O(R^2) besides the result
    slabs = max(1, chunk // (resolution * resolution)) if chunk > 0 else max(1, (1 << 18) // resolution ** 2)
    yy, zz = torch.meshgrid(axes[1], axes[2], indexing="ij")
    for x0 in range(0, resolution, slabs):
        xs = axes[0][x0:x0 + slabs]
        pts = torch.stack([xs[:, None, None].expand(-1, resolution, resolution),
                           yy[None].expand(len(xs), -1, -1), zz[None].expand(len(xs), -1, -1)], dim=-1)
        pts = pts.reshape(-1, 3)
        if device is not None:
            pts = pts.to(device)
        dens = density_fn(pts).reshape(-1).float().cpu().numpy()
        out[x0 * resolution ** 2:(x0 + len(xs)) * resolution ** 2] = dens
    return out.reshape(resolution, resolution, resolution)


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of log(1 + values): the level that best splits empty space from the object."""
    logv = np.log1p(np.clip(values.reshape(-1), 0, None))
    hist, edges = np.histogram(logv, bins=bins)
    centers = 0.5 * (edges[1:] + edges[:-1])
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers) / np.maximum(w0, 1)
    m1 = (np.sum(hist * centers) - np.cumsum(hist * centers)) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(np.expm1(centers[int(np.argmax(between))]))


def resolve_threshold(grid: np.ndarray, threshold: Union[float, str]) -> float:
    if isinstance(threshold, str):
        if threshold != "auto":
            raise ExportError(f"isosurface_threshold must be a number or 'auto', got '{threshold}'.")
        level = otsu_threshold(grid)
        logger.info("automatic isosurface threshold: %.4g", level)
        return level
    return float(threshold)


def fill_cavities(grid: np.ndarray, threshold: float, free_level: Optional[float] = None,
                  passage: int = 0) -> np.ndarray:
    """Raise enclosed empty pockets (not connected to the box boundary) above `threshold`. A NeRF's interior
    is never seen by any ray, so its density there is arbitrary; pockets would become inner surfaces.

    With `free_level` (< threshold), space counts as connected to the outside only through values below it:
    pockets behind thin fog (values between the two levels, e.g. under a surface seen at grazing angles)
    are filled too. So is fog that thickens towards a surface: where the field falls off softly the surface
    moves out to the `free_level` isosurface (by under a voxel at a trained NeRF's sharp surfaces).

    With `passage` > 0, a pocket also counts as enclosed when it reaches the outside only through passages
    narrower than 2 * passage + 1 voxels (pinholes in a shell that renders opaque, common in a dynamic field's
    never-seen interior). The outside is then the boundary-connected part of the free space opened by a
    (2 passage + 1)³ cube, grown back by passage + 1 voxels within the free space, so narrow gaps and corners
    next to the outside stay empty."""
    from scipy import ndimage

    inside = grid > threshold
    if free_level is None and passage == 0:
        filled = ndimage.binary_fill_holes(inside)
    else:
        free = ~inside if free_level is None else grid < min(free_level, threshold)
        wide = free
        if passage > 0:
            cube = np.ones((3, 3, 3), dtype=bool)
            wide = ndimage.binary_opening(np.pad(free, passage + 1, constant_values=True), cube, iterations=passage)
            wide = wide[(slice(passage + 1, -passage - 1),) * 3]
        labels, _ = ndimage.label(np.pad(wide, 1, constant_values=True))
        outside = (labels == labels[0, 0, 0])[1:-1, 1:-1, 1:-1]
        if passage > 0:
            outside = ndimage.binary_dilation(outside, cube, iterations=passage + 1, mask=free)
        filled = ~outside | inside
    cavities = filled & ~inside
    if not cavities.any():
        return grid
    logger.info("filled %d enclosed empty voxels", int(cavities.sum()))
    out = grid.copy()
    out[cavities] = max(2.0 * abs(threshold), threshold + 1.0)
    return out


def marching_cubes(grid: np.ndarray, threshold: float, bounds: Bounds) -> tuple[np.ndarray, np.ndarray]:
    """Isosurface of `grid` (values > threshold are inside; sampled as in `sample_density_grid`) in world
    coordinates: vertices (V, 3) float32, outward-facing faces (F, 3) int64. The grid is padded with empty
    space, so the surface is closed even where the object touches the box."""
    import mcubes

    finite = grid[np.isfinite(grid)]
    if finite.size == 0 or not (finite.max() > threshold and finite.min() < threshold):
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (float("nan"),) * 2
        raise ExportError(
            f"Empty isosurface: the density grid ranges over [{lo:.4g}, {hi:.4g}] and never crosses "
            f"isosurface_threshold={threshold:.4g}. Set system.exporter.isosurface_threshold between those values "
            "(or 'auto'); an all-empty field usually means the model is untrained or the checkpoint did not load."
        )
    low = min(float(finite.min()), threshold) - 1.0
    padded = np.pad(np.nan_to_num(grid, nan=low), 1, mode="constant", constant_values=low)
    vertices, faces = mcubes.marching_cubes(padded.astype(np.float64), float(threshold))
    box = box_bounds(bounds)
    vertices = (vertices - 1.0) / (np.array(grid.shape, dtype=np.float64) - 1.0) * (box[1] - box[0]) + box[0]
    faces = faces.astype(np.int64)
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    # PyMCubes' winding depends on whether inside is above or below the level: make normals point outwards
    if mesh.volume < 0:
        faces = faces[:, ::-1].copy()
    return vertices.astype(np.float32), faces


def extract_isosurface(density_fn: Callable[[Tensor], Tensor], resolution: int, threshold: Union[float, str],
                       bounds: Bounds, chunk: int = 262144, device: Optional[torch.device] = None,
                       cavities: bool = True, free_level: Optional[float] = None, passage: int = 0
                       ) -> tuple[np.ndarray, np.ndarray, float]:
    """Sample `density_fn` ((N, 3) -> (N, 1)) on the grid, resolve the threshold (a level or "auto"),
    optionally fill enclosed cavities (see `fill_cavities` for `free_level`, `passage`), run marching cubes. Returns
    vertices (V, 3), faces (F, 3), level."""
    grid = sample_density_grid(density_fn, resolution, bounds, chunk, device)
    level = resolve_threshold(grid, threshold)
    if cavities:
        grid = fill_cavities(grid, level, free_level, passage)
    vertices, faces = marching_cubes(grid, level, bounds)
    logger.info("marching cubes at %.4g: %d vertices, %d faces", level, len(vertices), len(faces))
    return vertices, faces, level


def remove_floaters(vertices: np.ndarray, faces: np.ndarray, min_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Drop connected components whose area is below `min_fraction` of the largest one's."""
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    labels = trimesh.graph.connected_component_labels(mesh.face_adjacency, node_count=len(faces))
    areas = np.bincount(labels, weights=mesh.area_faces)
    keep_labels = np.nonzero(areas >= min_fraction * areas.max())[0]
    keep = np.isin(labels, keep_labels)
    if keep.all():
        return vertices, faces
    logger.info("removed %d small component(s) (%d faces)", len(areas) - len(keep_labels), int((~keep).sum()))
    mesh.update_faces(keep)
    mesh.remove_unreferenced_vertices()
    return np.asarray(mesh.vertices, dtype=np.float32), np.asarray(mesh.faces, dtype=np.int64)


def decimate(vertices: np.ndarray, faces: np.ndarray, target_faces: int, aggressiveness: float = 7.0
             ) -> tuple[np.ndarray, np.ndarray]:
    """Quadric-error decimation to about `target_faces` with fast-simplification; unchanged if it is missing.

    `aggressiveness` is fast-simplification's `agg` (0: collapses in the order of least error, slowest;
    10: fastest). Measured on the bundled example, 20k faces, mean normal error to the true surface: a
    smooth refined DMTet mesh (111k faces, 5.3 deg) keeps its shape better with 3 (5.4 deg) than with the
    library's 7 (5.7 deg), while a marching-cubes mesh of a NeRF (120k faces) is better with 7 (16.8 vs
    17.9 deg: its voxel steps are collapsed first). A low value can stop short of the target; 7 is used then."""
    if len(faces) <= target_faces:
        return vertices, faces
    try:
        import fast_simplification
    except ImportError:
        logger.warning("fast-simplification is not installed: mesh decimation skipped (%d faces). "
                       "`pip install fast-simplification` to enable it.", len(faces))
        return vertices, faces

    def run(agg: float) -> tuple[np.ndarray, np.ndarray]:
        return fast_simplification.simplify(vertices.astype(np.float32), faces.astype(np.int32),
                                            target_reduction=1.0 - target_faces / len(faces), agg=agg)

    v, f = run(aggressiveness)
    if len(f) > 1.1 * target_faces and aggressiveness < 7.0:
        logger.info("decimation with aggressiveness %g stopped at %d faces (target %d): using 7",
                    aggressiveness, len(f), target_faces)
        v, f = run(7.0)
    return np.asarray(v, dtype=np.float32), np.asarray(f, dtype=np.int64)
