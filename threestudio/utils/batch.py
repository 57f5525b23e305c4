"""The camera batch: the one key set data modules produce, systems read and renderers consume.

Every data module yields dicts with (a subset of) the keys of `CameraBatch`; B is the number of views
(cameras), H x W the rays of each (a training batch of random rays is one view of n x 1 rays). A renderer
takes `render_inputs(batch)` plus explicit material options (e.g. `shading="albedo"`); the other keys
are for the system (ground truth, indices) or for guidances (cameras).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence, TypedDict

import torch
from torch import Tensor


class CameraBatch(TypedDict, total=False):
    """Shapes: B views of H x W rays. Angles in degrees; world z-up, OpenGL camera axes (docs/architecture.md)."""

    rays_o: Tensor            # (B, H, W, 3) ray origins
    rays_d: Tensor            # (B, H, W, 3) unit ray directions
    light_positions: Tensor   # (B, 3) one light per view, or (B, H, W, 3) one per ray
    bg_color: Tensor          # (C,), (B, C) or (B, H, W, C) background colour; absent: the background module's
    c2w: Tensor               # (B, 4, 4) camera-to-world
    camera_positions: Tensor  # (B, 3)
    mvp_mtx: Tensor           # (B, 4, 4) projection @ world-to-camera
    elevation: Tensor         # (B,)
    azimuth: Tensor           # (B,)
    azimuth_relative: Tensor  # (B,) azimuth relative to an input view (image-to-3D orbits)
    camera_distances: Tensor  # (B,)
    fovy: Tensor              # (B,) vertical field of view
    height: int               # H
    width: int                # W
    rgb: Tensor               # (B, H, W, 3) ground truth in [0, 1]
    mask: Tensor              # (B, H, W, 1) ground-truth opacity in [0, 1]
    index: Tensor             # (B,) view indices (evaluation)
    orbit: "CameraBatch"      # image-to-3D: the orbit's cameras, a nested batch of N views


# what a renderer consumes; everything else in a batch is for the system or the guidance
RENDER_INPUTS = ("rays_o", "rays_d", "light_positions", "bg_color")
BATCH_KEYS = frozenset(CameraBatch.__annotations__)


# what a mesh rasterizer (nvdiff-rasterizer) consumes: whole views with their camera matrices
RASTER_INPUTS = RENDER_INPUTS + ("mvp_mtx", "camera_positions", "height", "width")


def render_inputs(batch: Mapping[str, Any], keys: Sequence[str] = RENDER_INPUTS) -> dict[str, Any]:
    """The renderer's inputs of a camera batch (those of `keys`, a renderer's `inputs`, that are present)."""
    return {k: batch[k] for k in keys if k in batch}


def render_options(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments of a renderer call that are options for the material (e.g. `shading`,
    `ambient_ratio`): everything except camera-batch keys and nested batches (threestudio-style systems
    call `renderer(**batch)`), and except None values."""
    return {k: v for k, v in kwargs.items() if k not in BATCH_KEYS and v is not None and not isinstance(v, dict)}


def per_ray(value: Any, batch_size: int, height: int, width: int, name: str,
            dtype: torch.dtype = torch.float32, device: Any = None) -> Tensor:
    """(C,), (B, C) or (B, H, W, C) -> (B*H*W, C): one row per ray, in the order of rays_o.reshape(-1, 3)."""
    x = torch.as_tensor(value, dtype=dtype, device=device)
    n_rays = batch_size * height * width
    if x.dim() == 1:  # one value for everything
        return x.expand(n_rays, -1)
    if x.dim() == 2 and x.shape[0] == batch_size:  # one value per view
        return x[:, None, None, :].expand(batch_size, height, width, -1).reshape(n_rays, -1)
    if x.dim() == 4 and tuple(x.shape[:3]) == (batch_size, height, width):  # one value per ray
        return x.reshape(n_rays, -1)
    raise ValueError(
        f"{name} must have shape (C,), (B, C) or (B, H, W, C) with B, H, W = {batch_size}, {height}, {width}; "
        f"got {tuple(x.shape)}."
    )
