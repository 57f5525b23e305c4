"""Hi3D stages: time and peak memory per stage, and the memory plan of stage 2 (16 frames at 1024²).

    python benchmarks/bench_hi3d.py                 # CPU: tiny random models, stage 1 at 128², stage 2 at 256², 16 frames
    python benchmarks/bench_hi3d.py --memory-plan   # full-size models on the meta device: activation peaks per option
    python benchmarks/bench_hi3d.py --device cuda   # GPU: full-size random weights, fp16, 512² / 1024², 25 steps each

Memory figures: "peak tensors" is the largest total size of live tensors created inside the measured call (weights
excluded), tracked per operator (on the meta device nothing is allocated, so full-size plans can be sized on any
machine; scaled_dot_product_attention is counted as a fused kernel, i.e. its output only, as flash /
memory-efficient attention on CUDA, except in the rows marked "math attention" / "sliced attention");
"peak RSS" the process's; on CUDA torch.cuda.max_memory_allocated.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
import weakref
from typing import Any, Callable, List

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for pkg in ("sv3d", "hi3d"):
    sys.path.insert(0, os.path.join(REPO, "extensions", pkg))

from hi3d import Hi3DPipeline, refine_orbit, sample_orbit  # noqa: E402
from hi3d.testing import TINY_HEAD_CHANNELS, full_size_pipeline, write_tiny_ckpt_dir  # noqa: E402

GB = 2 ** 30


class PeakTensors(TorchDispatchMode):
    """Total size of live tensors created by operators inside the block (any device, meta included)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t._base is None:
                n = t.numel() * t.element_size()
                self.live += n
                self.peak = max(self.peak, self.live)
                weakref.finalize(t, self._free, n)
        return out

    def _free(self, n: int) -> None:
        self.live -= n


def _flash_like_sdpa(q, k, v, *args, **kwargs):
    """Stand-in for a fused (flash / memory-efficient) attention kernel: allocates only its output."""
    return q.new_empty(*q.shape[:-1], v.shape[-1])


def peak_of(fn: Callable[[], Any], fused_attention: bool = True) -> float:
    """Peak of live tensors created by fn; with `fused_attention`, scaled_dot_product_attention is counted as a
    fused kernel (output only, as flash / memory-efficient attention on CUDA), else PyTorch's math path is run."""
    real = torch.nn.functional.scaled_dot_product_attention
    if fused_attention:
        torch.nn.functional.scaled_dot_product_attention = _flash_like_sdpa
    try:
        with torch.no_grad(), PeakTensors() as mode:
            fn()
    finally:
        torch.nn.functional.scaled_dot_product_attention = real
    return mode.peak / GB


def rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def memory_plan() -> None:
    """Full-size stage 2 on the meta device: activation peaks of one guided denoiser call and of the encoders."""
    rows: List[tuple] = []
    with torch.device("meta"):
        pipe = full_size_pipeline("stage2", device="meta", dtype=torch.float16)
        weights = {n: sum(p.numel() * p.element_size() for p in m.parameters()) / GB for n, m in
                   (("UNet fp16", pipe.unet), ("ViT-H fp16", pipe.image_encoder), ("VAE x2 fp32", pipe.vae),
                    ("DPT-hybrid fp16", pipe.depth))}
        weights["VAE x2 fp32"] *= 2
        t, lat = 16, 128
        x = torch.zeros(1, t, 4, lat, lat)
        concat = torch.zeros(1, t, 13, lat, lat)
        ctx = torch.zeros(1, 1, 1024)
        ids = torch.zeros(1, 2)
        from sv3d.sampling import edm_denoise

        def denoise(batch: int) -> Callable[[], Any]:
            return lambda: edm_denoise(pipe.unet, torch.cat([x] * batch), torch.ones(batch), torch.cat([concat] * batch),
                                       torch.cat([ctx] * batch), torch.cat([ids] * batch))

        def add(name: str, fn: Callable[[], Any], fused: bool = True) -> None:
            t0 = time.perf_counter()
            rows.append((name, peak_of(fn, fused)))
            print(f"  {name}: {rows[-1][1]:.2f} GiB ({time.perf_counter() - t0:.0f} s)", flush=True)

        add("UNet call, CFG batched (32 frames), fused attention", denoise(2))
        add("UNet call, CFG sequential (16 frames), fused attention", denoise(1))
        add("UNet call, CFG sequential, math attention (no fused kernel)", denoise(1), fused=False)
        pipe.enable_attention_slicing(1)
        add("UNet call, CFG sequential, sliced attention (slice 1)", denoise(1), fused=False)
        frames = torch.zeros(t, 3, 1024, 1024)
        add("VAE encode 16 frames at once (fp32)", lambda: pipe.vae.encode(frames).latent_dist.mode())
        add("VAE encode 1 frame at a time", lambda: pipe.vae.encode(frames[:1]).latent_dist.mode())
        add("VAE decode 16 frames at once (fp32)", lambda: pipe.vae.decode(x[0]).sample)
        add("VAE decode 1 frame at a time", lambda: pipe.vae.decode(x[0, :1]).sample)
        half = frames.half()
        add("DPT depth, 16 frames at once (fp16)", lambda: pipe.depth(half, chunk=None))
        add("DPT depth, 1 frame at a time", lambda: pipe.depth(half, chunk=1))
    print("\nHi3D stage 2 memory plan (1024² x 16 frames, full-size models on the meta device)")
    print(f"| {'what':56s} | GiB |\n|{'-' * 58}|-----|")
    for name, gb in weights.items():
        print(f"| weights: {name:47s} | {gb:.2f} |")
    for name, gb in rows:
        print(f"| activations: {name:43s} | {gb:.2f} |")


def cpu_stages(repeats: int, steps: int) -> None:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_tiny_ckpt_dir(tmp, seed=0)
        p1 = Hi3DPipeline.from_single_file(paths["stage1"], num_head_channels=TINY_HEAD_CHANNELS)
        p2 = Hi3DPipeline.from_single_file(paths["stage2"], num_head_channels=TINY_HEAD_CHANNELS)
    img = torch.rand(1, 3, 128, 128) * 2 - 1
    frames = torch.rand(16, 3, 256, 256) * 2 - 1
    results = []
    for name, fn in (("stage 1 (16 x 128², tiny UNet)", lambda: sample_orbit(p1, img, 10, steps, 0)),
                     ("stage 2 (16 x 256², tiny UNet + DPT)", lambda: refine_orbit(p2, frames, 10, steps, 0))):
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        results.append((name, statistics.median(times), peak_of(fn)))
    print(f"\nHi3D stages on CPU, tiny random models, {steps} steps, threads {torch.get_num_threads()}, median of {repeats}")
    print(f"| {'stage':40s} | s | peak tensors GiB |\n|{'-' * 42}|---|---|")
    for name, s, gb in results:
        print(f"| {name:40s} | {s:.2f} | {gb:.3f} |")
    print(f"peak RSS {rss_gb():.2f} GiB")


def gpu_stages(steps: int, slicing: int, cfg_batch: bool) -> None:
    dev = "cuda"
    results = []
    img = torch.rand(1, 3, 512, 512, device=dev) * 2 - 1
    for stage in ("stage1", "stage2"):
        pipe = full_size_pipeline(stage, device=dev, dtype=torch.float16)
        pipe.vae.float(), pipe.first_stage.float()
        if slicing:
            pipe.enable_attention_slicing(slicing)
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        if stage == "stage1":
            sample_orbit(pipe, img, 10, steps, 0, decoding_t=1, cfg_batch=cfg_batch)
        else:
            frames = torch.rand(16, 3, 1024, 1024, device=dev) * 2 - 1
            refine_orbit(pipe, frames, 10, steps, 0, decoding_t=1, encode_chunk=1, cfg_batch=cfg_batch)
        torch.cuda.synchronize()
        results.append((stage, time.perf_counter() - t0, torch.cuda.max_memory_allocated() / GB))
        del pipe
        torch.cuda.empty_cache()
    print(f"\nHi3D full size on {torch.cuda.get_device_name()}: fp16 UNet, {steps} steps, CFG batched {cfg_batch}, "
          f"attention slicing {slicing or 'off'}, VAE 1 frame at a time")
    print("| stage | s | max allocated GiB |\n|---|---|---|")
    for stage, s, gb in results:
        print(f"| {stage} | {s:.1f} | {gb:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--memory-plan", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=None, help="default: 2 on CPU, 25 on CUDA")
    ap.add_argument("--attention-slicing", type=int, default=0)
    ap.add_argument("--no-cfg-batch", action="store_true")
    args = ap.parse_args()
    if args.memory_plan:
        memory_plan()
    elif args.device.startswith("cuda"):
        gpu_stages(args.steps or 25, args.attention_slicing, not args.no_cfg_batch)
    else:
        cpu_stages(args.repeats, args.steps or 2)


if __name__ == "__main__":
    main()
