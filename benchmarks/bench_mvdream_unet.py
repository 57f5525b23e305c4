"""Benchmark: full-size MVDream UNet forward on CPU (SD 2.1-base size, batch 8 = 4 views x CFG, 32x32 latents, fp32).

    python benchmarks/bench_mvdream_unet.py [--repeats 3] [--original /path/to/bytedance/MVDream]

Prints median/min forward time and peak resident memory of our UNet (mvdream.MultiViewUNet2DConditionModel, torch
SDPA attention). With --original (or $MVDREAM_ORIGINAL_REPO) pointing at a checkout of bytedance/MVDream (needs
einops importable), the original MultiViewUNetModel runs on the same random weights and inputs, and the table
shows both plus their max abs output difference. Each implementation runs in its own process so that peak memory
is its own. Needs ~8 GB RAM per process.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import torch

BATCH, VIEWS, LATENT, CONTEXT = 8, 4, 32, 1024


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _unet_state(seed: int):
    from mvdream.testing import FULL_SD21, random_value, unet_shapes

    gen = torch.Generator().manual_seed(seed)
    return {k: random_value(k, shape, gen) for k, shape in unet_shapes(FULL_SD21)}


def _inputs(seed: int):
    from mvdream import get_camera

    gen = torch.Generator().manual_seed(seed + 1)
    return (
        torch.randn(BATCH, 4, LATENT, LATENT, generator=gen),
        torch.full((BATCH,), 501),
        torch.randn(BATCH, 77, CONTEXT, generator=gen),
        get_camera(VIEWS, 15, 90).repeat(BATCH // VIEWS, 1),
    )


def _build_ours(state):
    from mvdream.convert import convert_unet
    from mvdream.ldm_config import SHIPPED_CONFIGS, load_original_config
    from mvdream.pipeline import build_from_state
    from mvdream.unet import MultiViewUNet2DConditionModel

    config, converted = convert_unet(state, load_original_config(str(SHIPPED_CONFIGS["sd-v2.1-base-4view"]), state))
    unet = build_from_state(lambda: MultiViewUNet2DConditionModel(**config), converted, torch.float32)
    return lambda x, t, ctx, cam: unet(x, t, encoder_hidden_states=ctx, camera=cam, num_views=VIEWS).sample


def _build_original(state, repo: str):
    # Load the checkout's `mvdream` package under another name (ours is also `mvdream`), without running its
    # __init__ (which pulls the hub download helpers); only the UNet module and its relatives are imported.
    package = types.ModuleType("mvdream_original")
    package.__path__ = [str(Path(repo) / "mvdream")]
    sys.modules["mvdream_original"] = package
    openaimodel = importlib.import_module("mvdream_original.ldm.modules.diffusionmodules.openaimodel")
    unet = openaimodel.MultiViewUNetModel(
        image_size=32, in_channels=4, out_channels=4, model_channels=320, attention_resolutions=[4, 2, 1],
        num_res_blocks=2, channel_mult=[1, 2, 4, 4], num_head_channels=64, use_spatial_transformer=True,
        use_linear_in_transformer=True, transformer_depth=1, context_dim=CONTEXT, use_checkpoint=False,
        legacy=False, camera_dim=16,
    ).eval()
    prefix = "model.diffusion_model."
    unet.load_state_dict({k[len(prefix):]: v for k, v in state.items()}, strict=True)
    return lambda x, t, ctx, cam: unet(x, t, context=ctx, camera=cam, num_frames=VIEWS)


def run_one(impl: str, repeats: int, warmup: int, seed: int, repo: str, out_path: str) -> None:
    """Child process: build one implementation, time its forward, write a JSON record."""
    torch.manual_seed(seed)
    state = _unet_state(seed)
    forward = _build_ours(state) if impl == "ours" else _build_original(state, repo)
    del state  # ours adopts the checkpoint tensors, the original copies them: keep only the model alive
    gc.collect()
    x, t, ctx, cam = _inputs(seed)
    rss_model = _rss_mb()
    times, cpu_times = [], []
    with torch.no_grad():
        for i in range(warmup + repeats):
            start, cpu_start = time.perf_counter(), time.process_time()
            out = forward(x, t, ctx, cam)
            if i >= warmup:
                times.append(time.perf_counter() - start)
                cpu_times.append(time.process_time() - cpu_start)
    torch.save(out, out_path + ".pt")
    record = {"impl": impl, "times": times, "cpu_times": cpu_times, "rss_model_mb": rss_model, "peak_rss_mb": _peak_rss_mb()}
    with open(out_path, "w") as handle:
        json.dump(record, handle)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--original", default=os.environ.get("MVDREAM_ORIGINAL_REPO"),
                        help="checkout of bytedance/MVDream to compare with (default $MVDREAM_ORIGINAL_REPO)")
    parser.add_argument("--only", choices=["ours", "original"], help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only:
        run_one(args.only, args.repeats, args.warmup, args.seed, args.original, args.result)
        return 0

    impls = ["ours"]
    if args.original:
        if (Path(args.original) / "mvdream" / "ldm").is_dir():
            impls.append("original")
        else:
            print(f"--original {args.original}: no mvdream/ldm inside, comparing nothing", file=sys.stderr)
    import tempfile

    records = {}
    with tempfile.TemporaryDirectory() as tmp:
        for impl in impls:
            result = os.path.join(tmp, f"{impl}.json")
            cmd = [sys.executable, __file__, "--only", impl, "--repeats", str(args.repeats), "--warmup",
                   str(args.warmup), "--seed", str(args.seed), "--result", result]
            if args.original:
                cmd += ["--original", args.original]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"{impl}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
                continue
            with open(result) as handle:
                records[impl] = json.load(handle)
            records[impl]["out"] = torch.load(result + ".pt", weights_only=True)
    if not records:
        return 1
    print(f"MVDream UNet forward, SD2.1-base size, batch {BATCH} ({VIEWS} views x CFG), {LATENT}x{LATENT} latents, "
          f"fp32, CPU, torch {torch.__version__}, {torch.get_num_threads()} threads, {args.repeats} runs")
    # CPU s = process CPU time (all threads) per forward: the work done, less sensitive than wall time to other
    # processes sharing the machine. forward MB = peak RSS minus RSS with the model loaded.
    print(f"{'implementation':<16}{'median s':>10}{'min s':>10}{'median CPU s':>14}{'peak RSS MB':>13}{'forward MB':>12}")
    for impl, rec in records.items():
        name = {"ours": "ours (SDPA)", "original": "original"}[impl]
        print(f"{name:<16}{statistics.median(rec['times']):>10.2f}{min(rec['times']):>10.2f}"
              f"{statistics.median(rec['cpu_times']):>14.2f}{rec['peak_rss_mb']:>13.0f}"
              f"{rec['peak_rss_mb'] - rec['rss_model_mb']:>12.0f}")
    if len(records) == 2:
        ours, orig = records["ours"], records["original"]
        diff = (ours["out"] - orig["out"]).abs().max().item()
        wall = statistics.median(orig["times"]) / statistics.median(ours["times"])
        cpu = statistics.median(orig["cpu_times"]) / statistics.median(ours["cpu_times"])
        print(f"max |ours - original| = {diff:.2e}; original/ours: wall {wall:.2f}x, CPU {cpu:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
