"""Occupancy-grid estimator in pure PyTorch (the CPU path; nerfacc's is used on CUDA when present).

Same behaviour and buffers (`resolution`, `aabbs`, `occs`, `binaries`) as nerfacc's
`OccGridEstimator` with one level, so checkpoints move between the two:
- `update_every_n_steps`: every n steps, occupancy = max(decay * occ, occ_eval_fn(x)) at a random
  point of each cell (all cells during warm-up, then a quarter of the cells uniformly plus as many
  occupied ones); a cell is occupied when above min(occ_thre, mean occupancy).
- `sampling`: marches each ray through the box with a fixed step, starting at the box entry (plus
  one random sub-step when stratified), keeping the samples whose midpoint lies in an occupied
  cell; optionally drops samples behind opaque ones (transmittance < early_stop_eps) or nearly
  transparent ones (alpha < alpha_thre) using `sigma_fn`.

Sampling is vectorised over rays: each ray is cut at the cell boundaries (the planes of the
occupied cells' bounding box), the occupied segments are kept, and the fixed-step samples inside
them are enumerated with `repeat_interleave`.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn as nn

from threestudio.models.renderers.volume_rendering import ray_aabb_intersect, render_weight_from_density
from threestudio.utils.ops import ray_starts

Samples = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _empty_samples(device: torch.device) -> Samples:
    return (torch.zeros(0, dtype=torch.long, device=device), torch.zeros(0, device=device),
            torch.zeros(0, device=device))


class OccupancyGridEstimator(nn.Module):
    def __init__(self, roi_aabb: torch.Tensor, resolution: int = 32, levels: int = 1) -> None:
        super().__init__()
        if levels != 1:
            raise ValueError(f"The PyTorch occupancy grid supports levels=1 only, got {levels}.")
        if resolution < 1:
            raise ValueError(f"The occupancy grid resolution must be positive, got {resolution}.")
        roi_aabb = torch.as_tensor(roi_aabb, dtype=torch.float32).reshape(6)
        self.levels = levels
        self.cells_per_lvl = resolution ** 3
        self.register_buffer("resolution", torch.tensor([resolution] * 3, dtype=torch.int32))
        self.register_buffer("aabbs", roi_aabb[None].clone())
        self.register_buffer("occs", torch.zeros(levels * self.cells_per_lvl))
        self.register_buffer("binaries", torch.zeros(levels, resolution, resolution, resolution, dtype=torch.bool))
        r = torch.arange(resolution)
        coords = torch.stack(torch.meshgrid(r, r, r, indexing="ij"), dim=-1).reshape(-1, 3)
        self.register_buffer("grid_coords", coords, persistent=False)

    # ------------------------------------------------------------------ helpers
    @property
    def res(self) -> int:
        return int(self.resolution[0])

    @property
    def aabb(self) -> torch.Tensor:
        return self.aabbs[0].view(2, 3)

    def fill(self, occupied: bool = True) -> None:
        """Mark every cell occupied (or empty), e.g. when pruning is off."""
        self.occs.fill_(1.0 if occupied else 0.0)
        self.binaries.fill_(occupied)

    def occupied_bounds(self) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        """Integer cell range [lo, hi) per axis containing all occupied cells, or None if none."""
        b = self.binaries[0]
        if not bool(b.any()):
            return None
        bounds = []
        for axis in range(3):
            other = tuple(d for d in range(3) if d != axis)
            idx = torch.nonzero(b.any(dim=other[1]).any(dim=other[0]))[:, 0]
            bounds.append((int(idx[0]), int(idx[-1]) + 1))
        lo = torch.tensor([b_[0] for b_ in bounds], device=b.device)
        hi = torch.tensor([b_[1] for b_ in bounds], device=b.device)
        return lo, hi

    # ------------------------------------------------------------------ update
    @torch.no_grad()
    def update_every_n_steps(self, step: int, occ_eval_fn: Callable[[torch.Tensor], torch.Tensor],
                             occ_thre: float = 1e-2, ema_decay: float = 0.95, warmup_steps: int = 256,
                             n: int = 16) -> None:
        if not self.training:
            raise RuntimeError("The occupancy grid is updated only in training mode.")
        if step % n == 0:
            self.update(step, occ_eval_fn, occ_thre=occ_thre, ema_decay=ema_decay, warmup_steps=warmup_steps)

    @torch.no_grad()
    def update(self, step: int, occ_eval_fn: Callable[[torch.Tensor], torch.Tensor], occ_thre: float = 1e-2,
               ema_decay: float = 0.95, warmup_steps: int = 256) -> None:
        device = self.occs.device
        valid = self.occs >= 0  # cells marked -1 are never visible (nerfacc convention)
        if step < warmup_steps:
            indices = torch.nonzero(valid)[:, 0]
        else:
            n = self.cells_per_lvl // 4
            uniform = torch.randint(self.cells_per_lvl, (n,), device=device)
            uniform = uniform[valid[uniform]]
            occupied = torch.nonzero(self.binaries.view(-1))[:, 0]
            if occupied.numel() > n:
                occupied = occupied[torch.randint(occupied.numel(), (n,), device=device)]
            indices = torch.cat([uniform, occupied])
        coords = self.grid_coords[indices].to(torch.float32)
        x = (coords + torch.rand_like(coords)) / self.res
        aabb = self.aabb
        x = aabb[0] + x * (aabb[1] - aabb[0])
        occ = occ_eval_fn(x).reshape(-1).to(self.occs.dtype)
        # sampled cells decay once, then take the largest new value (scatter-max over repeats)
        updated = self.occs.clone()
        updated[indices] = self.occs[indices] * ema_decay
        updated.scatter_reduce_(0, indices, occ, reduce="amax", include_self=True)
        self.occs.copy_(updated)
        thre = torch.clamp(self.occs[self.occs >= 0].mean(), max=occ_thre)
        self.binaries.copy_((self.occs > thre).view(self.binaries.shape))

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sampling(self, rays_o: torch.Tensor, rays_d: torch.Tensor,
                 sigma_fn: Optional[Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = None,
                 near_plane: float = 0.0, far_plane: float = 1e10, render_step_size: float = 1e-3,
                 early_stop_eps: float = 1e-4, alpha_thre: float = 0.0, stratified: bool = False) -> Samples:
        """Packed samples (ray_indices, t_starts, t_ends), sorted by ray then distance."""
        device = rays_o.device
        n_rays = rays_o.shape[0]
        bounds = self.occupied_bounds()
        if n_rays == 0 or bounds is None:
            return _empty_samples(device)
        res = self.res
        aabb = self.aabb
        cell = (aabb[1] - aabb[0]) / res
        lo, hi = bounds
        sub_box = torch.stack([aabb[0] + lo * cell, aabb[0] + hi * cell])

        # the step grid is anchored at the entry into the full box, so it does not depend on the grid
        t_box, _ = ray_aabb_intersect(rays_o, rays_d, aabb)
        t_anchor = torch.clamp(t_box, min=near_plane)
        if stratified:
            t_anchor = t_anchor + torch.rand_like(t_anchor) * render_step_size
        t_near, t_far = ray_aabb_intersect(rays_o, rays_d, sub_box)
        t_start = torch.maximum(t_near, t_anchor)
        t_end = torch.clamp(t_far, max=far_plane)
        hit = torch.nonzero(t_end > t_start)[:, 0]
        if hit.numel() == 0:
            return _empty_samples(device)
        o, d = rays_o[hit], rays_d[hit]
        t_start, t_end, t_anchor = t_start[hit], t_end[hit], t_anchor[hit]

        # distances at which each ray crosses the cell planes of the sub-box, sorted along the ray
        crossings = [t_start[:, None]]
        for axis in range(3):
            planes = aabb[0, axis] + torch.arange(int(lo[axis]), int(hi[axis]) + 1, device=device) * cell[axis]
            da = d[:, axis:axis + 1]
            safe = torch.where(da == 0, torch.full_like(da, 1e-20), da)
            crossings.append((planes[None, :] - o[:, axis:axis + 1]) / safe)
        crossings.append(t_end[:, None])
        ts = torch.cat(crossings, dim=1)
        ts = torch.where((ts >= t_start[:, None]) & (ts <= t_end[:, None]), ts, t_end[:, None])
        ts, _ = torch.sort(ts, dim=1)
        seg_a, seg_b = ts[:, :-1], ts[:, 1:]

        # occupancy of the cell around each segment's midpoint
        mid = (seg_a + seg_b) * 0.5
        pos = o[:, None, :] + d[:, None, :] * mid[..., None]
        idx = ((pos - aabb[0]) / cell).floor().long().clamp_(0, res - 1)
        occupied = self.binaries[0][idx[..., 0], idx[..., 1], idx[..., 2]] & (seg_b > seg_a)

        # fixed-step samples whose midpoint t_anchor + (k + 1/2) step lies in [seg_a, seg_b)
        step = render_step_size
        k_lo = torch.ceil((seg_a - t_anchor[:, None]) / step - 0.5).clamp_(min=0)
        k_hi = torch.ceil((seg_b - t_anchor[:, None]) / step - 0.5)
        counts = ((k_hi - k_lo).clamp_(min=0) * occupied).long().reshape(-1)
        total = int(counts.sum())
        if total == 0:
            return _empty_samples(device)
        seg_ids = torch.repeat_interleave(torch.arange(counts.numel(), device=device), counts)
        first = torch.cumsum(counts, 0) - counts
        k = k_lo.reshape(-1)[seg_ids] + (torch.arange(total, device=device) - first[seg_ids])
        n_seg = seg_a.shape[1]
        local_ray = seg_ids // n_seg
        t_starts = t_anchor[local_ray] + k * step
        t_ends = t_starts + step
        ray_indices = hit[local_ray]

        if sigma_fn is not None and (alpha_thre > 0.0 or early_stop_eps > 0.0):
            alpha_thre = min(alpha_thre, float(self.occs.mean()))
            keep = self._visible_samples(sigma_fn, ray_indices, t_starts, t_ends, n_rays, early_stop_eps, alpha_thre)
            ray_indices, t_starts, t_ends = ray_indices[keep], t_starts[keep], t_ends[keep]
        return ray_indices, t_starts, t_ends

    @staticmethod
    def _visible_samples(sigma_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
                         ray_indices: torch.Tensor, t_starts: torch.Tensor, t_ends: torch.Tensor, n_rays: int,
                         early_stop_eps: float, alpha_thre: float, first_round: int = 16) -> torch.Tensor:
        """Mask of the samples with transmittance >= early_stop_eps and alpha >= alpha_thre.

        Densities are evaluated front to back in rounds (the first `first_round` samples of every
        ray, then twice as many, ...), and rays that became opaque are not evaluated further: the
        samples skipped that way would have failed the transmittance test anyway, so the mask is
        the one a full evaluation gives, at a fraction of the cost for opaque objects.
        """
        total = t_starts.numel()
        device = t_starts.device
        starts, _ = ray_starts(ray_indices, n_rays)
        local = torch.arange(total, device=device) - starts[ray_indices]
        sorted_local, order = torch.sort(local, stable=True)
        sigmas = torch.zeros(total, dtype=t_starts.dtype, device=device)
        evaluated = torch.zeros(total, dtype=torch.bool, device=device)
        optical_depth = torch.zeros(n_rays, dtype=torch.float64, device=device)
        max_depth = -math.log(early_stop_eps) if early_stop_eps > 0 else math.inf
        lo, size = 0, first_round
        max_local = int(sorted_local[-1]) + 1
        while lo < max_local:
            a, b = torch.searchsorted(sorted_local, torch.tensor([lo, lo + size], device=device)).tolist()
            sel = order[a:b]
            sel = sel[optical_depth[ray_indices[sel]] <= max_depth]
            if sel.numel() == 0:
                break
            sig = sigma_fn(t_starts[sel], t_ends[sel], ray_indices[sel]).reshape(-1)
            if sig.shape != sel.shape:
                raise ValueError(f"sigma_fn must return one density per sample, got shape {tuple(sig.shape)}.")
            sigmas[sel] = sig.to(sigmas.dtype)
            evaluated[sel] = True
            optical_depth.index_add_(0, ray_indices[sel], (sig * (t_ends[sel] - t_starts[sel])).to(torch.float64))
            lo, size = lo + size, size * 2
        _, trans, alphas = render_weight_from_density(t_starts, t_ends, sigmas, ray_indices, n_rays)
        keep = evaluated & (trans >= early_stop_eps)
        if alpha_thre > 0:
            keep &= alphas >= alpha_thre
        return keep
