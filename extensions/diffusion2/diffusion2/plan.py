"""Memory plan and time estimate of the joint sampling, printed before it starts.

The estimate times one real UNet call of each model at the planned chunk size (on the real conditions, dummy
latents) and multiplies by the calls per joint evaluation; peak memory is the device's peak allocation during
those calls (CUDA) or the process's peak RSS (CPU). Under torchrun every rank measures its own share and the
figures are combined with an all-reduce (max), so rank 0 prints the slowest rank's time.
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass
from typing import Tuple

import torch

from .joint import JointSampler, LineConditions, line_chunks


@dataclass
class PlanEstimate:
    matrix: Tuple[int, ...]  # (V, F, 4, h, w)
    chunk: int
    world_size: int
    evaluations: int  # joint evaluations (steps + VRS redos)
    calls_per_evaluation: int  # UNet calls of the busiest rank
    seconds_per_evaluation: float  # of the slowest rank
    peak_bytes: int  # of the hungriest rank
    weight_bytes: int  # both pipelines, one rank
    matrix_bytes: int  # latents + the two estimates, one rank
    device: str

    @property
    def total_seconds(self) -> float:
        return self.seconds_per_evaluation * self.evaluations

    def format(self) -> str:
        v, f, c, h, w = self.matrix
        gib = 1024.0**3
        mem = "peak allocated" if self.device.startswith("cuda") else "peak process RSS"
        return "\n".join([
            f"Diffusion² plan: {v} views x {f} frames of {c}x{h}x{w} latents on {self.world_size} rank(s) ({self.device}), "
            f"{self.evaluations} joint evaluations (steps + VRS redos)",
            f"  chunk {self.chunk} lines per UNet call (x2 for CFG); {self.calls_per_evaluation} UNet calls per evaluation "
            f"on the busiest rank",
            f"  memory per rank: weights {self.weight_bytes / gib:.2f} GiB, matrix buffers {self.matrix_bytes / gib:.3f} GiB, "
            f"{mem} {self.peak_bytes / gib:.2f} GiB",
            f"  estimate: {self.seconds_per_evaluation:.2f} s per joint evaluation, {self.total_seconds / 60:.1f} min of "
            "joint sampling (VAE decoding of the matrix not included)",
        ])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_chunk(pipe, cond: LineConditions, chunk: int, line_shape, device, dtype) -> float:
    """Seconds of one guided call on the first chunk of `cond`'s lines (0 when this rank owns none)."""
    if len(cond.index) == 0:
        return 0.0
    n = min(chunk, len(cond.index))
    x = torch.randn((n,) + tuple(line_shape), generator=torch.Generator().manual_seed(0)).to(device, dtype)
    sigma = torch.full((n,), 10.0, device=device)
    _sync(device)
    t0 = time.perf_counter()
    pipe.guided_denoise(x, sigma, cond.concat[:n], cond.context[:n], cond.ids[:n], cond.scales)
    _sync(device)
    return time.perf_counter() - t0


def _bytes(module) -> int:
    return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))


@torch.no_grad()
def estimate_plan(sampler: JointSampler, matrix_shape: Tuple[int, ...], num_steps: int) -> PlanEstimate:
    """Time one call of each model, then combine over ranks (max)."""
    v, f = matrix_shape[:2]
    latent = tuple(matrix_shape[2:])
    device = sampler.mv.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t_mv = _time_chunk(sampler.mv, sampler.mv_cond, sampler.chunk, (v,) + latent, device, torch.float32)
    t_vid = _time_chunk(sampler.vid, sampler.vid_cond, sampler.chunk, (f,) + latent, device, torch.float32)
    per_eval = 0.0
    for cond, t in ((sampler.mv_cond, t_mv), (sampler.vid_cond, t_vid)):
        first = min(sampler.chunk, len(cond.index))
        per_eval += sum(t * (b - a) / max(first, 1) for a, b in line_chunks(cond.index, sampler.chunk))
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    stats = torch.tensor([per_eval, float(peak), float(sampler.calls_per_evaluation())], dtype=torch.float64)
    stats = sampler.ctx.all_reduce_max(stats.to(device) if device.type == "cuda" else stats).cpu()
    weights = sum(_bytes(m) for p in (sampler.mv, sampler.vid) for m in (p.unet, p.vae, p.image_encoder))
    numel = 1
    for s in matrix_shape:
        numel *= s
    return PlanEstimate(
        matrix=tuple(matrix_shape),
        chunk=sampler.chunk,
        world_size=sampler.ctx.world_size,
        evaluations=sampler.evaluations(num_steps),
        calls_per_evaluation=int(stats[2]),
        seconds_per_evaluation=float(stats[0]),
        peak_bytes=int(stats[1]),
        weight_bytes=weights,
        matrix_bytes=numel * 4 * 3,
        device=str(device),
    )
