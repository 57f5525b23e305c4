"""Random and orbit camera batches shared by the camera data modules (docs/architecture.md §3 conventions)."""
from __future__ import annotations

import math
from dataclasses import dataclass


import torch
import torch.nn.functional as F
from torch import Tensor

from threestudio.utils.ops import (
    camera_positions_from_spherical,
    fov_to_focal,
    get_mvp_matrix,
    get_projection_matrix,
    get_ray_directions,
    get_rays,
    look_at_c2w,
)


@dataclass
class CameraRanges:
    elevation_range: tuple = (-10.0, 90.0)
    azimuth_range: tuple = (-180.0, 180.0)
    camera_distance_range: tuple = (1.0, 1.5)
    fovy_range: tuple = (40.0, 70.0)
    camera_perturb: float = 0.1
    center_perturb: float = 0.2
    up_perturb: float = 0.02
    light_position_perturb: float = 1.0
    light_distance_range: tuple = (0.8, 1.5)
    batch_uniform_azimuth: bool = True
    # camera distance = sampled distance / tan(fovy / 2): the object fills the same part of the image
    relative_radius: bool = False


def _uniform(lo: float, hi: float, n: int, gen: torch.Generator) -> Tensor:
    return torch.rand(n, generator=gen) * (hi - lo) + lo


def sample_elevation(lo: float, hi: float, n: int, gen: torch.Generator) -> Tensor:
    """Half the time uniform in angle, half uniform on the sphere (as threestudio), in degrees."""
    if torch.rand(1, generator=gen).item() < 0.5:
        return _uniform(lo, hi, n, gen)
    s_lo, s_hi = math.sin(math.radians(lo)), math.sin(math.radians(hi))
    return torch.rad2deg(torch.asin(_uniform(s_lo, s_hi, n, gen)))


def camera_batch(c2w: Tensor, fovy_deg: Tensor, height: int, width: int, light_positions: Tensor,
                 elevation: Tensor, azimuth: Tensor, distances: Tensor) -> dict:
    """Rays and matrices of a camera batch. All angles in degrees."""
    fovy = torch.deg2rad(fovy_deg)
    focal = fov_to_focal(fovy, height)
    # directions for a focal length of one pixel, then divided per camera by its focal length
    directions = get_ray_directions(height, width, 1.0)[None].repeat(len(c2w), 1, 1, 1)
    directions[..., :2] = directions[..., :2] / focal[:, None, None, None]
    rays_o, rays_d = get_rays(directions, c2w, normalize=True)
    proj = get_projection_matrix(fovy, width / height, 0.01, 100.0)
    return {
        "rays_o": rays_o,
        "rays_d": rays_d,
        "mvp_mtx": get_mvp_matrix(c2w, proj),
        "c2w": c2w,
        "camera_positions": c2w[:, :3, 3],
        "light_positions": light_positions,
        "elevation": elevation,
        "azimuth": azimuth,
        "camera_distances": distances,
        "fovy": fovy_deg,
        "height": height,
        "width": width,
    }


def sample_random_cameras(ranges: CameraRanges, batch_size: int, n_view: int, height: int, width: int,
                          gen: torch.Generator) -> dict:
    """`batch_size // n_view` objects, each seen by `n_view` cameras sharing elevation, fovy and distance,
    with azimuths 360/n_view apart from a random offset. n_view = 1 gives independent cameras."""
    if batch_size % n_view != 0:
        raise ValueError(f"batch_size ({batch_size}) must be a multiple of n_view ({n_view}).")
    n_obj = batch_size // n_view
    elevation = sample_elevation(*ranges.elevation_range, n_obj, gen).repeat_interleave(n_view)
    az_lo, az_hi = ranges.azimuth_range
    if n_view > 1:
        offset = _uniform(az_lo, az_hi, n_obj, gen)
        azimuth = (offset[:, None] + torch.arange(n_view) * (360.0 / n_view)).reshape(-1)
    elif ranges.batch_uniform_azimuth:
        # stratified: one azimuth in each of batch_size equal sectors
        azimuth = (torch.rand(batch_size, generator=gen) + torch.arange(batch_size)) / batch_size * (az_hi - az_lo) + az_lo
    else:
        azimuth = _uniform(az_lo, az_hi, batch_size, gen)
    fovy = _uniform(*ranges.fovy_range, n_obj, gen).repeat_interleave(n_view)
    distance = _uniform(*ranges.camera_distance_range, n_obj, gen).repeat_interleave(n_view)
    if ranges.relative_radius:
        distance = distance / torch.tan(torch.deg2rad(fovy) / 2)

    positions = camera_positions_from_spherical(elevation, azimuth, distance)
    centers = torch.zeros_like(positions)
    up = torch.tensor([0.0, 0.0, 1.0]).expand(batch_size, 3)
    if ranges.camera_perturb > 0:
        positions = positions + (torch.rand(batch_size, 3, generator=gen) * 2 - 1) * ranges.camera_perturb
    if ranges.center_perturb > 0:
        centers = centers + torch.randn(batch_size, 3, generator=gen) * ranges.center_perturb
    if ranges.up_perturb > 0:
        up = F.normalize(up + torch.randn(batch_size, 3, generator=gen) * ranges.up_perturb, dim=-1)
    c2w = look_at_c2w(positions, centers, up)

    # light near the camera direction ("dreamfusion" strategy)
    light_distance = _uniform(*ranges.light_distance_range, batch_size, gen)
    light_dir = F.normalize(positions + torch.randn(batch_size, 3, generator=gen) * ranges.light_position_perturb, dim=-1)
    light_positions = light_dir * light_distance[:, None]
    return camera_batch(c2w, fovy, height, width, light_positions, elevation, azimuth, distance)


def orbit_cameras(n_views: int, elevation_deg: float, distance: float, fovy_deg: float, height: int, width: int,
                  azimuth_start: float = 0.0, relative_radius: bool = False) -> dict:
    """`n_views` cameras evenly spaced in azimuth (from `azimuth_start`), lights at the cameras."""
    azimuth = azimuth_start + torch.arange(n_views, dtype=torch.float32) * (360.0 / n_views)
    elevation = torch.full((n_views,), float(elevation_deg))
    fovy = torch.full((n_views,), float(fovy_deg))
    distances = torch.full((n_views,), float(distance))
    if relative_radius:
        distances = distances / torch.tan(torch.deg2rad(fovy) / 2)
    positions = camera_positions_from_spherical(elevation, azimuth, distances)
    c2w = look_at_c2w(positions)
    return camera_batch(c2w, fovy, height, width, positions.clone(), elevation, azimuth, distances)
