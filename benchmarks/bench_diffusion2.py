"""Diffusion² joint step (SV3D_p over frame columns + SVD-xt over view rows, both with CFG): seconds per joint
evaluation and peak memory of the one-GPU plan, per chunk size (lines per UNet call).

    python benchmarks/bench_diffusion2.py                          # CPU: tiny UNets, 5x4 and 21x25 grids at 8x8
    python benchmarks/bench_diffusion2.py --size full --fp16       # CUDA: full-size UNets, 21x25 at 72x72
Random weights (no checkpoint); the VAE and CLIP are not part of a joint step. A VRS step costs two
evaluations; the full default run is 50 steps + 10 VRS redos = 60 evaluations. Each row also prints the plan's
estimate (one timed call per model, diffusion2.plan) next to the measured median.
"""

from __future__ import annotations

import argparse
import copy
import os
import resource
import statistics
import time

import torch
from sv3d import SV3DPipeline, orbit_azimuths_deg
from sv3d.config import shipped_config_path, spec_from_config
from sv3d.convert_unet import unet_config_from_network_params
from sv3d.unet import SV3DUNet

from diffusion2 import DistContext, JointSampler, LineConditions, ScaleSchedule, estimate_plan, video_view_weights

# name -> (model_channels, head channels, context dim, grids (V, F, latent side))
SIZES = {
    "tiny": (32, 16, 32, [(5, 4, 8), (21, 25, 8)]),
    "reduced": (64, 32, 64, [(21, 25, 8), (21, 25, 16)]),
    "full": (320, 64, 1024, [(21, 25, 72)]),
}


def _unet_only(version: str, mc: int, head: int, ctx: int, device: str, dtype: torch.dtype) -> SV3DPipeline:
    """A pipeline whose UNet is randomly initialised at the given width (a joint step uses only the UNet)."""
    spec = spec_from_config(shipped_config_path(version), version)
    net = copy.deepcopy(spec.network)
    net.update(model_channels=mc, num_head_channels=head, context_dim=ctx)
    torch.manual_seed(0)
    unet = SV3DUNet(**unet_config_from_network_params(net, spec.vector_widths)).to(device=device)
    if dtype != torch.float32:
        unet = unet.to(dtype=dtype)
    return SV3DPipeline(unet, torch.nn.Identity(), torch.nn.Identity(), spec)


def _conditions(pipe: SV3DPipeline, lines: int, frames: int, hw: int, ctx_dim: int, device: str) -> LineConditions:
    g = torch.Generator().manual_seed(1)
    k = len(pipe.spec.vector_keys)
    return LineConditions(range(lines), torch.randn(lines, 1, ctx_dim, generator=g).to(device),
                          torch.randn(lines, 4, hw, hw, generator=g).to(device),
                          torch.rand(lines, frames, k, generator=g).to(device), torch.full((frames,), 2.0, device=device))


def _peak_gb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


@torch.no_grad()
def bench(mv, vid, views, frames, hw, chunk, ctx_dim, device, repeats) -> dict:
    sampler = JointSampler(mv, vid, _conditions(mv, frames, views, hw, ctx_dim, device),
                           _conditions(vid, views, frames, hw, ctx_dim, device),
                           video_view_weights(orbit_azimuths_deg(views)), ScaleSchedule(), 10, chunk, DistContext())
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    plan = estimate_plan(sampler, (views, frames, 4, hw, hw), 50)
    x = torch.randn(views, frames, 4, hw, hw, generator=torch.Generator().manual_seed(2)).to(device) * 10
    sigma = torch.tensor(10.0, device=device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sampler.denoise(x, sigma, 0.6)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return {"median": statistics.median(times), "estimate": plan.seconds_per_evaluation, "peak": _peak_gb(device),
            "calls": sampler.calls_per_evaluation()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=list(SIZES), default="tiny")
    p.add_argument("--chunks", type=int, nargs="+", default=[1, 5, 25])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--fp16", action="store_true", help="UNets in float16 (CUDA)")
    a = p.parse_args()
    mc, head, ctx_dim, grids = SIZES[a.size]
    dtype = torch.float16 if a.fp16 else torch.float32
    print(f"device {a.device}, torch threads {torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
          f"load average {os.getloadavg()[0]:.1f}, UNets {a.size} (model_channels {mc}), {dtype}")
    mv = _unet_only("sv3d_p", mc, head, ctx_dim, a.device, dtype)
    vid = _unet_only("svd_xt", mc, head, ctx_dim, a.device, dtype)
    params = sum(t.numel() for pipe in (mv, vid) for t in pipe.unet.parameters()) / 1e6
    print(f"UNet parameters (both): {params:.1f} M")
    print("| grid V x F | latents | chunk | UNet calls / evaluation | s / joint evaluation (median) | plan estimate (s) | "
          f"peak {'allocated' if a.device.startswith('cuda') else 'RSS'} (GB) | 60 evaluations (min) |")
    print("|---|---|---|---|---|---|---|---|")
    for views, frames, hw in grids:
        for chunk in a.chunks:
            r = bench(mv, vid, views, frames, hw, chunk, ctx_dim, a.device, a.repeats)
            print(f"| {views} x {frames} | 4x{hw}x{hw} | {chunk} | {r['calls']} | {r['median']:.3f} | {r['estimate']:.3f} | "
                  f"{r['peak']:.2f} | {r['median']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
