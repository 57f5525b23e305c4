"""UV atlas (xatlas) and texture baking: rasterising the mesh in UV space and filling the seams.

Texture images are stored with row 0 at the top: texel (row, col) covers u in [col, col+1]/S and
v in [S-row-1, S-row]/S (OBJ convention, v up), so `sample_texture(tex, uv)` reads what an OBJ viewer shows.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

logger = logging.getLogger(__name__)


@dataclass
class UVMesh:
    """A mesh split along its UV seams: vertices (V,3), faces (F,3), uv (V,2) in [0,1]; source_index (V,) is the
    vertex of the unsplit mesh each one copies (so per-vertex data such as normals carries over seams)."""

    vertices: np.ndarray
    faces: np.ndarray
    uv: np.ndarray
    source_index: np.ndarray


def uv_unwrap(vertices: np.ndarray, faces: np.ndarray, texture_size: int = 1024, padding: int = 2) -> UVMesh:
    """Charts and packing by xatlas; vertices on seams are duplicated."""
    import xatlas

    atlas = xatlas.Atlas()
    atlas.add_mesh(vertices.astype(np.float32), faces.astype(np.uint32))
    pack = xatlas.PackOptions()
    pack.resolution = texture_size
    pack.padding = padding
    pack.bilinear = True
    atlas.generate(xatlas.ChartOptions(), pack)
    vmapping, indices, uvs = atlas[0]
    return UVMesh(vertices[vmapping].astype(np.float32), indices.astype(np.int64), uvs.astype(np.float32),
                  vmapping.astype(np.int64))


def uv_to_pixels(uv: np.ndarray, size: int) -> np.ndarray:
    """uv in [0,1] (v up) -> continuous (x, y) pixel coordinates (y down; texel centres at i + 0.5)."""
    return np.stack([uv[:, 0] * size, (1.0 - uv[:, 1]) * size], axis=-1)


def rasterize_uv_numpy(uv: np.ndarray, faces: np.ndarray, size: int, max_candidates: int = 1 << 22
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Which face covers each texel centre, and where. Returns face index (S,S) (-1: none) and barycentric
    coordinates (S,S,3). Triangles are grouped by bounding-box size so that each group tests a fixed grid
    of candidate texels in one vectorised pass. (Hand-written: no maintained CPU rasteriser for this.)"""
    face_index = np.full((size, size), -1, dtype=np.int64)
    bary = np.zeros((size, size, 3), dtype=np.float32)
    tri = uv_to_pixels(uv, size)[faces].astype(np.float64)  # (F,3,2)
    lo = np.clip(np.floor(tri.min(axis=1) - 0.5), 0, size - 1).astype(np.int64)  # first candidate texel
    hi = np.clip(np.ceil(tri.max(axis=1) - 0.5), 0, size - 1).astype(np.int64)
    extent = (hi - lo + 1).max(axis=1)
    bucket = np.ceil(np.log2(np.maximum(extent, 1))).astype(np.int64)
    for b in np.unique(bucket):
        box = 1 << int(b)
        oy, ox = np.meshgrid(np.arange(box), np.arange(box), indexing="ij")
        offsets = np.stack([ox.reshape(-1), oy.reshape(-1)], axis=-1)  # (K,2) as (x, y)
        ids = np.nonzero(bucket == b)[0]
        step = max(1, max_candidates // len(offsets))
        for start in range(0, len(ids), step):
            f = ids[start:start + step]
            texel = lo[f][:, None, :] + offsets[None]  # (n,K,2) integer texel (x, y)
            p = texel + 0.5
            a, bb, c = tri[f, 0][:, None], tri[f, 1][:, None], tri[f, 2][:, None]
            v0, v1, v2 = bb - a, c - a, p - a
            den = v0[..., 0] * v1[..., 1] - v1[..., 0] * v0[..., 1]
            den = np.where(np.abs(den) < 1e-12, np.nan, den)
            w1 = (v2[..., 0] * v1[..., 1] - v1[..., 0] * v2[..., 1]) / den
            w2 = (v0[..., 0] * v2[..., 1] - v2[..., 0] * v0[..., 1]) / den
            w0 = 1.0 - w1 - w2
            eps = -1e-6
            inside = (w0 >= eps) & (w1 >= eps) & (w2 >= eps) & (texel[..., 0] < size) & (texel[..., 1] < size)
            n_idx, k_idx = np.nonzero(inside)
            tx, ty = texel[n_idx, k_idx, 0], texel[n_idx, k_idx, 1]
            face_index[ty, tx] = f[n_idx]
            bary[ty, tx] = np.stack([w0[n_idx, k_idx], w1[n_idx, k_idx], w2[n_idx, k_idx]], axis=-1)
    return face_index, bary


def rasterize_uv_nvdiffrast(uv: np.ndarray, faces: np.ndarray, size: int, device: torch.device
                            ) -> tuple[np.ndarray, np.ndarray]:
    """Same result as `rasterize_uv_numpy`, on the GPU with nvdiffrast (imported lazily, CUDA only)."""
    import nvdiffrast.torch as dr

    uv_t = torch.as_tensor(uv, dtype=torch.float32, device=device)
    # clip space: x = 2u - 1; image row 0 of nvdiffrast's output is y = -1, i.e. v = 0 -> flip afterwards
    clip = torch.cat([uv_t * 2 - 1, torch.zeros_like(uv_t[:, :1]), torch.ones_like(uv_t[:, :1])], dim=-1)
    tri = torch.as_tensor(faces, dtype=torch.int32, device=device)
    rast, _ = dr.rasterize(dr.RasterizeCudaContext(device=device), clip[None], tri, resolution=[size, size])
    rast = torch.flip(rast[0], dims=[0])
    face_index = rast[..., 3].long() - 1
    # nvdiffrast's (u, v) weight the triangle's first and second vertex, 1 - u - v the third
    u, v = rast[..., 0], rast[..., 1]
    bary = torch.stack([u, v, 1 - u - v], dim=-1)
    return face_index.cpu().numpy(), bary.cpu().numpy().astype(np.float32)


def rasterize_uv(uv: np.ndarray, faces: np.ndarray, size: int, backend: str = "auto",
                 device: torch.device | None = None) -> tuple[np.ndarray, np.ndarray]:
    """UV-space rasterisation: nvdiffrast when asked for (or 'auto' on CUDA with it installed), else NumPy."""
    if backend not in ("auto", "cpu", "nvdiffrast"):
        raise ValueError(f"rasterizer must be auto, cpu or nvdiffrast, got '{backend}'.")
    on_cuda = device is not None and torch.device(device).type == "cuda"
    if backend == "nvdiffrast" or (backend == "auto" and on_cuda):
        try:
            return rasterize_uv_nvdiffrast(uv, faces, size, device or torch.device("cuda"))
        except ImportError:
            if backend == "nvdiffrast":
                raise
            logger.info("nvdiffrast not importable: baking the texture on the CPU")
    return rasterize_uv_numpy(uv, faces, size)


def fill_empty_texels(texture: np.ndarray, filled: np.ndarray) -> np.ndarray:
    """Give every texel outside the charts the colour of the nearest covered texel, so that bilinear
    filtering and mipmaps do not bleed the background colour across seams."""
    from scipy.ndimage import distance_transform_edt

    if filled.all() or not filled.any():
        return texture
    _, (rows, cols) = distance_transform_edt(~filled, return_indices=True)
    return texture[rows, cols]


def sample_texture(texture: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear lookup of (S,S,C) `texture` at uv (N,2) (v up), clamped at the border."""
    size_y, size_x = texture.shape[:2]
    x = np.clip(uv[:, 0] * size_x - 0.5, 0, size_x - 1)
    y = np.clip((1.0 - uv[:, 1]) * size_y - 0.5, 0, size_y - 1)
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    x1, y1 = np.minimum(x0 + 1, size_x - 1), np.minimum(y0 + 1, size_y - 1)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    top = texture[y0, x0] * (1 - fx) + texture[y0, x1] * fx
    bottom = texture[y1, x0] * (1 - fx) + texture[y1, x1] * fx
    return top * (1 - fy) + bottom * fy
