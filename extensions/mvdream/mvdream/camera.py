"""Camera inputs of the MVDream UNet.

The UNet takes a camera-to-world matrix (OpenGL camera axes: x right, y up, looking along -z) in a right-handed
z-up world, its translation scaled to unit length, flattened row-major to 16 numbers. Distance and field of view
are not encoded.

Two azimuth conventions meet here:
- MVDream's (`get_camera`, `mvdream_c2w`): azimuth 0 looks at the object from -y, azimuth 90 from +x;
- the toolkit's (`orbit_c2w`): position d * (cos e cos a, cos e sin a, sin e), azimuth 0 looks from +x.
So MVDream azimuth = toolkit azimuth + 90; both give the same matrices for the same viewpoint.
"""

from __future__ import annotations

from typing import Union

import numpy as np
import torch

ArrayLike = Union[float, np.ndarray, torch.Tensor]

# Rotation taking MVDream's y-up world (the OpenGL default) to its z-up ("blender") world: (x, y, z) -> (x, -z, y).
Y_UP_TO_Z_UP = np.array([[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=np.float64)


def lookat_c2w(position: np.ndarray, up: np.ndarray) -> np.ndarray:
    """Camera-to-world (4, 4) of a camera at `position` looking at the origin, OpenGL axes, float64."""
    position = np.asarray(position, dtype=np.float64)
    forward = -position / np.linalg.norm(position)
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    cam_up = np.cross(right, forward)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, cam_up, -forward, position
    return c2w


def orbit_c2w(elevation_deg: float, azimuth_deg: float, distance: float = 1.0) -> np.ndarray:
    """Toolkit convention (z up, azimuth 0 looks from +x): camera-to-world (4, 4) looking at the origin."""
    e, a = np.radians(elevation_deg), np.radians(azimuth_deg)
    position = distance * np.array([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)])
    return lookat_c2w(position, np.array([0.0, 0.0, 1.0]))


def mvdream_c2w(elevation_deg: float, azimuth_deg: float, blender_coord: bool = True) -> np.ndarray:
    """MVDream's camera-to-world (4, 4) on the unit sphere: z-up world by default, its y-up world otherwise."""
    e, a = np.radians(elevation_deg), np.radians(azimuth_deg)
    position_y_up = np.array([np.cos(e) * np.sin(a), np.sin(e), np.cos(e) * np.cos(a)])
    c2w = lookat_c2w(position_y_up, np.array([0.0, 1.0, 0.0]))
    return Y_UP_TO_Z_UP @ c2w if blender_coord else c2w


def get_camera(
    num_frames: int,
    elevation: float = 15.0,
    azimuth_start: float = 0.0,
    azimuth_span: float = 360.0,
    blender_coord: bool = True,
) -> torch.Tensor:
    """(num_frames, 16) camera inputs in MVDream's convention: evenly spaced azimuths from `azimuth_start`.

    MVDream's text-to-image default is azimuth_start=90 (first view from +x). Like the original, the translation
    is left as is (unit length already).
    """
    step = azimuth_span / num_frames
    mats = [mvdream_c2w(elevation, azimuth_start + i * step, blender_coord).reshape(16) for i in range(num_frames)]
    return torch.tensor(np.stack(mats), dtype=torch.float32)


def c2w_to_camera(c2w: Union[np.ndarray, torch.Tensor], eps: float = 1e-8) -> torch.Tensor:
    """Camera input (..., 16) from camera-to-world matrices (..., 4, 4) in the z-up world with OpenGL axes.

    The translation is scaled to unit length (as MVDream's `normalize_camera`), then the matrix is flattened
    row-major. This is how a renderer's cameras (any distance, any fov) condition the UNet.
    """
    c2w = torch.as_tensor(c2w)
    if c2w.shape[-2:] != (4, 4):
        raise ValueError(f"expected camera-to-world matrices of shape (..., 4, 4), got {tuple(c2w.shape)}")
    c2w = c2w.clone()
    translation = c2w[..., :3, 3]
    c2w[..., :3, 3] = translation / (translation.norm(dim=-1, keepdim=True) + eps)
    return c2w.reshape(*c2w.shape[:-2], 16)


def toolkit_to_mvdream_azimuth(azimuth_deg: ArrayLike) -> ArrayLike:
    """Toolkit azimuth (0 = from +x) to MVDream's (90 = from +x)."""
    return azimuth_deg + 90.0
