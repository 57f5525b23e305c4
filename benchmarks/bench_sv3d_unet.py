"""Full-size SV3D UNet (1.52B parameters) forward: median time and peak memory for 21 frames.

    flock /tmp/bigmem.lock python benchmarks/bench_sv3d_unet.py            # CPU: 21 frames at 8x8 latents
    python benchmarks/bench_sv3d_unet.py --latents 8 16 --cfg              # CFG batch (2 videos) too
On CUDA it also runs 72x72 latents (576x576 frames) in fp16 and bf16. Random weights: no checkpoint is needed.
The CPU run needs ~7 GB of RAM (fp32 weights + activations).
"""

from __future__ import annotations

import argparse
import gc
import resource
import statistics
import time

import torch

from sv3d.config import shipped_config_path, spec_from_config
from sv3d.convert_unet import unet_config_from_network_params
from sv3d.unet import SV3DUNet


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def build(version: str, dtype: torch.dtype, device: str) -> SV3DUNet:
    spec = spec_from_config(shipped_config_path(version), version)
    unet = SV3DUNet(**unet_config_from_network_params(spec.network, spec.vector_widths))
    unet = unet.to(device=device)
    if dtype != torch.float32:
        unet = unet.to(dtype=dtype)
    return unet.eval()


@torch.no_grad()
def bench(unet: SV3DUNet, batch: int, frames: int, hw: int, repeats: int, warmup: int) -> dict:
    dev, dtype = unet.device, unet.dtype
    k = len(unet.added_id_widths)
    x = torch.randn(batch, frames, unet.config.in_channels, hw, hw, device=dev, dtype=dtype)
    t = torch.full((batch,), 0.4, device=dev, dtype=dtype)
    ctx = torch.randn(batch, 1, unet.config.cross_attention_dim, device=dev, dtype=dtype)
    ids = torch.rand(batch, frames, k, device=dev)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        unet(x, t, ctx, ids)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else _rss_gb()
    return {"median_s": statistics.median(times), "min_s": min(times), "peak_gb": peak}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", default="sv3d_p", choices=["sv3d_u", "sv3d_p", "svd"])
    p.add_argument("--frames", type=int, default=21)
    p.add_argument("--latents", type=int, nargs="+", default=[8], help="CPU latent sizes")
    p.add_argument("--cfg", action="store_true", help="also time the CFG batch (2 videos)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    batches = [1, 2] if args.cfg else [1]
    unet = build(args.version, torch.float32, "cpu")
    params = sum(q.numel() for q in unet.parameters()) / 1e9
    base = _rss_gb()
    for hw in args.latents:
        for b in batches:
            r = bench(unet, b, args.frames, hw, args.repeats, warmup=1)
            rows.append(("cpu", "fp32", b, args.frames, hw, r["median_s"], r["min_s"], f"{r['peak_gb']:.2f} RSS (weights {base:.2f})"))
    del unet
    gc.collect()
    if torch.cuda.is_available():
        for dtype, name in ((torch.float16, "fp16"), (torch.bfloat16, "bf16")):
            unet = build(args.version, dtype, "cuda")
            for hw in sorted(set(args.latents + [72])):
                for b in (1, 2):
                    r = bench(unet, b, args.frames, hw, args.repeats + 2, warmup=2)
                    rows.append(("cuda", name, b, args.frames, hw, r["median_s"], r["min_s"], f"{r['peak_gb']:.2f} alloc"))
            del unet
            gc.collect()
            torch.cuda.empty_cache()
    print(f"SV3D UNet ({args.version}), {params:.3f}B parameters, torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print("| device | dtype | videos | frames | latent | median s | min s | peak GB |")
    print("|---|---|---|---|---|---|---|---|")
    for dev, dt, b, f, hw, med, mn, peak in rows:
        print(f"| {dev} | {dt} | {b} | {f} | {hw}x{hw} | {med:.3f} | {mn:.3f} | {peak} |")


if __name__ == "__main__":
    main()
