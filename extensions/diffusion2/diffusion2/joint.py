"""Joint denoising of the views x frames latent matrix by SV3D_p (columns) and SVD-xt (rows), Euler-EDM with VRS.

One joint evaluation at noise level sigma:
  D_mv[:, t] = SV3D_p's CFG-guided estimate of column t (the V views of frame t, conditioned on reference-video
               frame t), D_vid[v] = SVD-xt's CFG-guided estimate of row v (the F frames of view v, conditioned on
               orbit view v); each model applies its own per-frame guidance before mixing;
  D = w_mv(v) D_mv + w_vid(v) D_vid   (diffusion2.weights).
Lines go through the UNets `chunk` at a time (a batch of 2 * chunk videos with CFG), which is the memory plan of
one GPU; under torchrun each rank takes an even share of the columns and rows (diffusion2.distributed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from sv3d import SV3DPipeline

from .distributed import DistContext
from .weights import mixing_weights, multiview_scale


@dataclass
class LineConditions:
    """Conditioning of N lines (videos of T frames) of one model, for the lines `index` of the matrix.

    context (N, 1, D) CLIP embedding; concat (N, 4, h, w) condition latent (unscaled); ids (N, T, K) raw added
    time ids; scales (T,) the model's per-frame CFG scale."""

    index: range
    context: torch.Tensor
    concat: torch.Tensor
    ids: torch.Tensor
    scales: torch.Tensor


@dataclass
class ScaleSchedule:
    """The multiview share s_i (diffusion2.weights.multiview_scale)."""

    kind: str = "constant"
    scale: float = 0.6
    scale_min: float = 0.0
    scale_max: float = 1.0
    k: float = 15.0

    def __call__(self, step: int, num_steps: int) -> float:
        return multiview_scale(step, num_steps, self.kind, self.scale, self.scale_min, self.scale_max, self.k)


def line_chunks(lines: range, chunk: int):
    """(start, stop) positions of consecutive groups of at most `chunk` of the lines."""
    for a in range(0, len(lines), max(1, int(chunk))):
        yield a, min(a + max(1, int(chunk)), len(lines))


class JointSampler:
    """Denoises a (V, F, 4, h, w) matrix with `mv` (SV3D_p, over columns) and `vid` (SVD-xt, over rows).

    `mv_cond` / `vid_cond` hold the conditions of the columns / rows this rank owns; `view_weights` (V,) is
    0.25 + 0.75 cos² φ_v (diffusion2.weights.video_view_weights), `vrs_steps` the number of first steps that
    are re-noised and redone once (VRS)."""

    def __init__(
        self,
        mv: SV3DPipeline,
        vid: SV3DPipeline,
        mv_cond: LineConditions,
        vid_cond: LineConditions,
        view_weights: torch.Tensor,
        schedule: Optional[ScaleSchedule] = None,
        vrs_steps: int = 10,
        chunk: int = 2,
        ctx: Optional[DistContext] = None,
    ):
        self.mv, self.vid = mv, vid
        self.mv_cond, self.vid_cond = mv_cond, vid_cond
        self.view_weights = torch.as_tensor(view_weights, dtype=torch.float64)
        self.schedule = schedule or ScaleSchedule()
        self.vrs_steps = int(vrs_steps)
        self.chunk = max(1, int(chunk))
        self.ctx = ctx or DistContext()
        self.progress: Optional[Callable[[int], None]] = None  # called with 1 after every UNet chunk

    # ------------------------------------------------------------------ one evaluation
    def calls_per_evaluation(self) -> int:
        """UNet calls of this rank per joint evaluation (both models)."""
        return -(-len(self.mv_cond.index) // self.chunk) + -(-len(self.vid_cond.index) // self.chunk)

    @torch.no_grad()
    def model_estimates(self, x: torch.Tensor, sigma: torch.Tensor, need_mv: bool = True, need_vid: bool = True) -> torch.Tensor:
        """(2, V, F, 4, h, w): [D_mv, D_vid] of this rank's lines, zeros elsewhere (and for a skipped model)."""
        out = x.new_zeros((2,) + tuple(x.shape))
        if need_mv:
            c = self.mv_cond
            for a, b in line_chunks(c.index, self.chunk):
                cols = c.index[a:b]
                xs = x[:, cols.start : cols.stop].transpose(0, 1)  # (n, V, 4, h, w): one orbit per frame
                d = self.mv.guided_denoise(xs, sigma.expand(len(cols)), c.concat[a:b], c.context[a:b], c.ids[a:b], c.scales)
                out[0, :, cols.start : cols.stop] = d.transpose(0, 1).to(x.dtype)
                self._tick()
        if need_vid:
            c = self.vid_cond
            for a, b in line_chunks(c.index, self.chunk):
                rows = c.index[a:b]
                xs = x[rows.start : rows.stop]  # (n, F, 4, h, w): one video per view
                d = self.vid.guided_denoise(xs, sigma.expand(len(rows)), c.concat[a:b], c.context[a:b], c.ids[a:b], c.scales)
                out[1, rows.start : rows.stop] = d.to(x.dtype)
                self._tick()
        return out

    def _tick(self) -> None:
        if self.progress is not None:
            self.progress(1)

    @torch.no_grad()
    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, scale: float) -> torch.Tensor:
        """The mixed estimate D (V, F, 4, h, w) at noise level sigma (0-dim) with multiview share `scale`."""
        w_mv, w_vid = mixing_weights(self.view_weights, scale)
        need_mv, need_vid = bool((w_mv != 0).any()), bool((w_vid != 0).any())
        est = self.ctx.all_reduce_sum(self.model_estimates(x, sigma.to(x.device), need_mv, need_vid))
        shape = (-1,) + (1,) * (x.dim() - 1)
        return w_mv.to(x).view(shape) * est[0] + w_vid.to(x).view(shape) * est[1]

    # ------------------------------------------------------------------ sampling
    def evaluations(self, num_steps: int) -> int:
        return num_steps + min(self.vrs_steps, num_steps)

    @torch.no_grad()
    def sample(
        self,
        noise: torch.Tensor,
        sigmas: torch.Tensor,
        generator: Optional[torch.Generator] = None,
        num_steps: Optional[int] = None,
        callback: Optional[Callable[[int, int, torch.Tensor], None]] = None,
    ) -> torch.Tensor:
        """Euler-EDM from unit `noise` (V, F, 4, h, w) over `sigmas` (n + 1 values, last 0).

        Steps i < vrs_steps are VRS steps: after the Euler step, noise of std sigma_i - sigma_{i+1} is added
        (drawn from `generator`, on the CPU, so every rank draws the same) and the step from sigma_i is redone
        once. `num_steps` sets the schedule's length (default len(sigmas) - 1; pass the full count when
        running only the first steps of a longer schedule). `callback(step, repeat, x)` after every update."""
        sigmas = sigmas.to(noise.device, torch.float32)
        n = len(sigmas) - 1 if num_steps is None else int(num_steps)
        x = noise * torch.sqrt(1.0 + sigmas[0] ** 2)
        for i in range(len(sigmas) - 1):
            sigma, nxt = sigmas[i], sigmas[i + 1]
            scale = self.schedule(i, n)
            repeats = 2 if i < self.vrs_steps else 1
            for j in range(repeats):
                denoised = self.denoise(x, sigma, scale)
                x = x + (nxt - sigma) * (x - denoised) / sigma
                if j < repeats - 1:
                    eps = torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x.device, x.dtype)
                    x = x + (sigma - nxt) * eps
                if callback is not None:
                    callback(i, j, x)
        return x

