"""Volume rendering on packed samples (all rays' samples in one flat list, sorted by ray).

Pure-PyTorch equivalents of nerfacc's `render_weight_from_density`, `render_visibility_from_density`
and `accumulate_along_rays`; differentiable, no Python loop over rays.
"""
from __future__ import annotations

from typing import Optional

import torch

from threestudio.utils.ops import exclusive_cumsum_along_rays


def ray_aabb_intersect(rays_o: torch.Tensor, rays_d: torch.Tensor, aabb: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Entry and exit distances (N,) of rays with the box aabb (2, 3); exit <= entry when missed."""
    # the slab method: divisions by zero give +-inf, which min/max handle correctly
    with torch.no_grad():
        inv = 1.0 / torch.where(rays_d == 0, torch.full_like(rays_d, 1e-20), rays_d)
        t0 = (aabb[0] - rays_o) * inv
        t1 = (aabb[1] - rays_o) * inv
        t_near = torch.minimum(t0, t1).amax(dim=-1)
        t_far = torch.maximum(t0, t1).amin(dim=-1)
    return t_near, t_far


def exclusive_optical_depth(sigma_delta: torch.Tensor, ray_indices: torch.Tensor, n_rays: int) -> torch.Tensor:
    """sum_{j<i, same ray} sigma_j delta_j for each packed sample i (differentiable)."""
    depth = exclusive_cumsum_along_rays(sigma_delta, ray_indices, n_rays)
    return depth.to(sigma_delta.dtype).clamp(min=0.0)


def render_weight_from_density(t_starts: torch.Tensor, t_ends: torch.Tensor, sigmas: torch.Tensor,
                               ray_indices: torch.Tensor, n_rays: int
                               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample (weights, transmittance, alpha): w_i = T_i (1 - exp(-sigma_i delta_i))."""
    sigma_delta = sigmas * (t_ends - t_starts)
    trans = torch.exp(-exclusive_optical_depth(sigma_delta, ray_indices, n_rays))
    alphas = 1.0 - torch.exp(-sigma_delta)
    return trans * alphas, trans, alphas


@torch.no_grad()
def render_visibility_from_density(t_starts: torch.Tensor, t_ends: torch.Tensor, sigmas: torch.Tensor,
                                   ray_indices: torch.Tensor, n_rays: int, early_stop_eps: float = 1e-4,
                                   alpha_thre: float = 0.0) -> torch.Tensor:
    """Samples worth shading: transmittance >= early_stop_eps and alpha >= alpha_thre."""
    _, trans, alphas = render_weight_from_density(t_starts, t_ends, sigmas, ray_indices, n_rays)
    visible = trans >= early_stop_eps
    if alpha_thre > 0:
        visible &= alphas >= alpha_thre
    return visible


def accumulate_along_rays(weights: torch.Tensor, ray_indices: torch.Tensor, n_rays: int,
                          values: Optional[torch.Tensor] = None) -> torch.Tensor:
    """sum_i w_i v_i per ray: (n_rays, C), or (n_rays, 1) for the weights alone."""
    src = weights[:, None] if values is None else weights[:, None] * values
    out = torch.zeros(n_rays, src.shape[-1], dtype=src.dtype, device=src.device)
    return out.index_add(0, ray_indices, src)
