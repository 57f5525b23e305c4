"""Camera orbits of SV3D and their export as NeRF-style transforms.json in the toolkit's convention.

Convention (the toolkit's docs/architecture.md §3): z-up world, OpenGL camera axes (x right, y up, looking along -z), camera-to-world
matrices, camera position d * (cos e cos a, cos e sin a, sin e); azimuth 0 looks at the object from +x.
SV3D orbits: the last frame is the input view, so azimuths are taken relative to the last frame's azimuth.
"""

from __future__ import annotations

import json
import math
import os
from typing import List, Optional, Sequence, Union

import numpy as np
import torch

# Field of view and camera distance of SV3D's training renders (third-party facts; used only for the exported
# cameras, the model itself is not told either).
SV3D_FOV_DEG = 33.8
SV3D_CAMERA_DISTANCE = 2.0


def orbit_azimuths_deg(num_frames: int = 21) -> np.ndarray:
    """Evenly spaced azimuths whose last one is 0 (the input view): frame i at ((i+1) * 360 / N) mod 360."""
    return np.linspace(0, 360, num_frames + 1)[1:] % 360


def _per_frame(value: Union[float, Sequence[float]], num_frames: int, what: str) -> List[float]:
    if isinstance(value, (int, float)):
        return [float(value)] * num_frames
    values = [float(v) for v in value]
    if len(values) == 1:
        return values * num_frames
    if len(values) != num_frames:
        raise ValueError(f"give 1 value or a list of {num_frames} values for {what}; got {len(values)}")
    return values


def sv3d_p_camera_ids(
    elevations_deg: Union[float, Sequence[float]] = 10.0,
    azimuths_deg: Optional[Sequence[float]] = None,
    num_frames: int = 21,
    last_azimuth_full_turn: bool = False,
) -> torch.Tensor:
    """(T, 2) [polar_rad, azimuth_rad] per frame as sv3d_p expects them: polar = 90 deg - elevation; azimuth
    relative to the last frame's, wrapped to [0, 360) deg.

    `last_azimuth_full_turn`: give the last (input) view the id 2*pi instead of 0, as Diffusion²'s sampling
    script does (the same camera, but a different sinusoid for the model)."""
    elev = _per_frame(elevations_deg, num_frames, "elevations_deg")
    az = orbit_azimuths_deg(num_frames) if azimuths_deg is None else _per_frame(azimuths_deg, num_frames, "azimuths_deg")
    polars = [math.radians(90.0 - e) for e in elev]
    rel = [math.radians((a - az[-1]) % 360.0) for a in az]
    if last_azimuth_full_turn:
        rel[-1] = 2.0 * math.pi
    return torch.tensor([polars, rel], dtype=torch.float64).t().to(torch.float32)


def orbit_c2w(
    elevations_deg: Sequence[float], azimuths_deg: Sequence[float], distance: float = SV3D_CAMERA_DISTANCE
) -> np.ndarray:
    """(N, 4, 4) camera-to-world matrices looking at the origin, z-up world, OpenGL camera axes."""
    mats = []
    for e_deg, a_deg in zip(elevations_deg, azimuths_deg):
        e, a = math.radians(e_deg), math.radians(a_deg)
        pos = distance * np.array([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)])
        back = pos / np.linalg.norm(pos)  # camera +z points away from the object
        right = np.cross(np.array([0.0, 0.0, 1.0]), back)
        if np.linalg.norm(right) < 1e-8:  # looking straight up/down: any horizontal right vector
            right = np.array([-math.sin(a), math.cos(a), 0.0])
        right /= np.linalg.norm(right)
        up = np.cross(back, right)
        m = np.eye(4)
        m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, up, back, pos
        mats.append(m)
    return np.stack(mats)


def write_transforms_json(
    path: str,
    file_paths: Sequence[str],
    elevations_deg: Sequence[float],
    azimuths_deg: Sequence[float],
    fov_deg: float = SV3D_FOV_DEG,
    distance: float = SV3D_CAMERA_DISTANCE,
    width: Optional[int] = None,
    height: Optional[int] = None,
    extra: Optional[dict] = None,
) -> dict:
    """Write the orbit's cameras as transforms.json (NeRF-synthetic layout); azimuths relative to the input view.
    `extra`: more top-level entries (e.g. a frame's time in a 4-D sequence)."""
    c2w = orbit_c2w(elevations_deg, azimuths_deg, distance)
    data = {"camera_angle_x": math.radians(fov_deg), "frames": []}
    data.update(extra or {})
    if width and height:
        data["w"], data["h"] = int(width), int(height)
    for fp, m, e, a in zip(file_paths, c2w, elevations_deg, azimuths_deg):
        data["frames"].append(
            {"file_path": fp, "transform_matrix": m.tolist(), "elevation_deg": float(e), "azimuth_deg": float(a)}
        )
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
    return data
