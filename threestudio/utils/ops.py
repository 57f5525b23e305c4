"""Camera and ray maths in the project's conventions (docs/architecture.md), and segment sums over packed samples.

World: right-handed, z up. Camera-to-world matrices use OpenGL camera axes (x right, y up,
looking along -z). Angles are in degrees unless a name says otherwise.
"""
from __future__ import annotations

import math
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

Scalar = Union[float, Tensor]


def camera_positions_from_spherical(elevation_deg: Tensor, azimuth_deg: Tensor, distance: Tensor) -> Tensor:
    """(B,) elevation, azimuth, distance -> (B,3) positions d·(cos e cos a, cos e sin a, sin e)."""
    e = torch.deg2rad(elevation_deg)
    a = torch.deg2rad(azimuth_deg)
    return torch.stack(
        [distance * torch.cos(e) * torch.cos(a), distance * torch.cos(e) * torch.sin(a), distance * torch.sin(e)],
        dim=-1,
    )


def look_at_c2w(positions: Tensor, centers: Optional[Tensor] = None, up: Optional[Tensor] = None) -> Tensor:
    """(B,3) camera positions looking at (B,3) centers -> (B,4,4) camera-to-world (OpenGL axes)."""
    if centers is None:
        centers = torch.zeros_like(positions)
    if up is None:
        up = torch.tensor([0.0, 0.0, 1.0], dtype=positions.dtype, device=positions.device).expand_as(positions)
    forward = F.normalize(centers - positions, dim=-1)
    right = torch.cross(forward, up, dim=-1)
    # looking straight up or down: any right vector perpendicular to forward will do
    degenerate = right.norm(dim=-1, keepdim=True) < 1e-6
    fallback = torch.tensor([0.0, 1.0, 0.0], dtype=positions.dtype, device=positions.device).expand_as(forward)
    right = torch.where(degenerate, torch.cross(forward, fallback, dim=-1), right)
    right = F.normalize(right, dim=-1)
    cam_up = F.normalize(torch.cross(right, forward, dim=-1), dim=-1)
    c2w = torch.zeros(positions.shape[0], 4, 4, dtype=positions.dtype, device=positions.device)
    c2w[:, :3, 0] = right
    c2w[:, :3, 1] = cam_up
    c2w[:, :3, 2] = -forward
    c2w[:, :3, 3] = positions
    c2w[:, 3, 3] = 1.0
    return c2w


def orbit_c2w(elevation_deg: Tensor, azimuth_deg: Tensor, distance: Tensor) -> Tensor:
    """Camera-to-world matrices of cameras on a sphere looking at the origin."""
    return look_at_c2w(camera_positions_from_spherical(elevation_deg, azimuth_deg, distance))


def fov_to_focal(fov_rad: Scalar, size: Scalar) -> Scalar:
    """Focal length in pixels from a full field of view across `size` pixels."""
    return 0.5 * size / (torch.tan(0.5 * fov_rad) if isinstance(fov_rad, Tensor) else math.tan(0.5 * fov_rad))


def get_ray_directions(height: int, width: int, focal: Union[float, tuple[float, float]],
                       principal: Optional[tuple[float, float]] = None, use_pixel_centers: bool = True) -> Tensor:
    """(H,W,3) camera-space ray directions (not normalised, z = -1); row 0 is the top of the image."""
    fx, fy = (focal, focal) if isinstance(focal, (int, float)) else focal
    cx, cy = principal if principal is not None else (width / 2.0, height / 2.0)
    offset = 0.5 if use_pixel_centers else 0.0
    j, i = torch.meshgrid(
        torch.arange(height, dtype=torch.float32) + offset,
        torch.arange(width, dtype=torch.float32) + offset,
        indexing="ij",
    )
    return torch.stack([(i - cx) / fx, -(j - cy) / fy, -torch.ones_like(i)], dim=-1)


def get_rays(directions: Tensor, c2w: Tensor, normalize: bool = True) -> tuple[Tensor, Tensor]:
    """Camera-space directions (H,W,3) or (B,H,W,3) and c2w (B,4,4) -> world rays_o, rays_d (B,H,W,3)."""
    if directions.dim() == 3:
        directions = directions.unsqueeze(0)
    rays_d = torch.einsum("bhwc,bdc->bhwd", directions.expand(c2w.shape[0], -1, -1, -1), c2w[:, :3, :3])
    rays_o = c2w[:, None, None, :3, 3].expand_as(rays_d)
    if normalize:
        rays_d = F.normalize(rays_d, dim=-1)
    return rays_o.contiguous(), rays_d.contiguous()


def get_projection_matrix(fovy_rad: Tensor, aspect_wh: float, near: float = 0.01, far: float = 100.0) -> Tensor:
    """(B,) vertical fov -> (B,4,4) OpenGL perspective projection."""
    batch = fovy_rad.shape[0]
    proj = torch.zeros(batch, 4, 4, dtype=torch.float32, device=fovy_rad.device)
    proj[:, 0, 0] = 1.0 / (torch.tan(fovy_rad / 2.0) * aspect_wh)
    proj[:, 1, 1] = 1.0 / torch.tan(fovy_rad / 2.0)
    proj[:, 2, 2] = -(far + near) / (far - near)
    proj[:, 2, 3] = -2.0 * far * near / (far - near)
    proj[:, 3, 2] = -1.0
    return proj


def get_projection_matrix_from_intrinsics(intrinsics: Tensor, width: int, height: int, near: float = 0.01,
                                          far: float = 100.0) -> Tensor:
    """(B, 4) pixel intrinsics (fx, fy, cx, cy), image row 0 at the top -> (B, 4, 4) OpenGL projection with
    NDC y up (+1 at the top row); equals `get_projection_matrix` for a centred principal point."""
    fx, fy, cx, cy = intrinsics.unbind(-1)
    proj = torch.zeros(intrinsics.shape[0], 4, 4, dtype=torch.float32, device=intrinsics.device)
    proj[:, 0, 0] = 2.0 * fx / width
    proj[:, 0, 2] = 1.0 - 2.0 * cx / width
    proj[:, 1, 1] = 2.0 * fy / height
    proj[:, 1, 2] = 2.0 * cy / height - 1.0
    proj[:, 2, 2] = -(far + near) / (far - near)
    proj[:, 2, 3] = -2.0 * far * near / (far - near)
    proj[:, 3, 2] = -1.0
    return proj


def get_mvp_matrix(c2w: Tensor, proj: Tensor) -> Tensor:
    """Model-view-projection (B,4,4) = proj @ inverse(c2w)."""
    return proj @ torch.linalg.inv(c2w)


def ray_starts(ray_indices: Tensor, n_rays: int) -> tuple[Tensor, Tensor]:
    """First packed index and sample count of each ray (ray_indices must be sorted)."""
    counts = torch.bincount(ray_indices, minlength=n_rays)
    starts = torch.cumsum(counts, 0) - counts
    return starts, counts


def exclusive_cumsum_along_rays(values: Tensor, ray_indices: Tensor, n_rays: int) -> Tensor:
    """sum_{j<i, same ray} v_j for each packed sample i: (N,) -> (N,) float64 (differentiable).

    One float64 running sum over all samples, minus each ray's value at its first sample: exact to
    ~1e-12 even with millions of samples (float32 would lose the small per-ray sums).
    """
    values = values.to(torch.float64)
    if values.numel() == 0:
        return values
    exclusive = torch.cumsum(values, dim=0) - values
    starts, _ = ray_starts(ray_indices, n_rays)
    ray_offset = exclusive[starts.clamp(max=exclusive.shape[0] - 1)]
    return exclusive - ray_offset[ray_indices]
