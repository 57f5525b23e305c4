"""One-GPU check of every CUDA path the CPU test suite cannot run, in one table (≤ 8 minutes on one GPU).

    bash benchmarks/gpu_check.sh                  # all checks
    python benchmarks/gpu_check.py --list         # what would run
    python benchmarks/gpu_check.py --checks hashgrid estimator

Each check runs in its own process (a crash or an out-of-memory error stays in its row) with its own time
limit, and the whole run stops starting new checks after `--budget` seconds. Rows:
- env: torch, CUDA, the GPU, and why each optional CUDA package is or is not usable;
- hashgrid: tinycudann's grid vs ours on the same parameters (max abs difference, M points/s fwd+bwd);
- estimator: nerfacc's occupancy-grid estimator vs ours on the same blob (image difference, ms per frame);
- rasterizer: nvdiffrast vs our CPU kernel on a 100k-triangle sphere at 512² (triangle ids, depth, ms);
- fp16 priors: full-size MVDream UNet + VAE and SV3D UNet with random weights in fp16 (finite outputs);
- sds-mvdream / sds-sv3d: one training step of each system at the reference resolutions (s/step, peak GB);
- sv3d-azimuth: direction of SV3D's orbit on a synthetic turntable (needs a real checkpoint: $SV3D_CKPT);
- further rows that other parts of the project register in EXTRA_CHECKS (commands with a time limit).
Weights are random unless a checkpoint path is given; nothing is downloaded.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from typing import Callable

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

Row = dict  # {"check", "status" (ok | FAIL | skip), "result", "figures"}


def _row(check: str, status: str, result: str, figures: str = "") -> Row:
    return {"check": check, "status": status, "result": result, "figures": figures}


def _sync() -> None:
    import torch

    torch.cuda.synchronize()


def _median_seconds(fn: Callable[[], object], repeats: int = 5, warmup: int = 2) -> float:
    import statistics

    for _ in range(warmup):
        fn()
    _sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ----------------------------------------------------------------------------------------------------- checks
def check_env() -> list[Row]:
    import torch

    from threestudio.utils.misc import cuda_package_error

    rows = [_row("env", "ok", f"torch {torch.__version__}, CUDA {torch.version.cuda}",
                 torch.cuda.get_device_name(0))]
    for package in ("tinycudann", "nerfacc", "nvdiffrast"):
        error = cuda_package_error(package)
        rows.append(_row(f"env: {package}", "ok" if error is None else "skip",
                         "imports" if error is None else error))
    return rows


def check_hashgrid() -> list[Row]:
    import torch

    from threestudio.models.encodings.hash_grid import HashGridEncoding
    from threestudio.utils.misc import cuda_package_error

    config = {"otype": "HashGrid", "n_levels": 16, "n_features_per_level": 2, "log2_hashmap_size": 19,
              "base_resolution": 16, "per_level_scale": 1.447269237440378}
    n = 2 ** 20
    x = torch.rand(n, 3, device="cuda")
    ours = HashGridEncoding(3, {**config, "backend": "torch"}).cuda()

    def speed(enc: torch.nn.Module) -> float:
        def step():
            enc.zero_grad(set_to_none=True)
            enc(x).float().sum().backward()
        return n / _median_seconds(step) / 1e6

    rows = [_row("hashgrid: ours (torch) on CUDA", "ok", "", f"{speed(ours):.1f} M pts/s fwd+bwd")]
    error = cuda_package_error("tinycudann")
    if error is not None:
        return rows + [_row("hashgrid: tinycudann", "skip", error)]
    tcnn = HashGridEncoding(3, {**config, "backend": "tcnn"}).cuda()
    with torch.no_grad():  # one parameter layout: ours is tinycudann's
        tcnn.encoding.params.copy_(ours.encoding.params.to(tcnn.encoding.params.dtype))
        diff = float((tcnn(x).float() - ours(x).float()).abs().max())
    status = "ok" if diff < 1e-3 else "FAIL"
    return rows + [_row("hashgrid: tinycudann vs ours", status, f"max |diff| {diff:.2e} (fp16 tcnn: < 1e-3)",
                        f"{speed(tcnn):.1f} M pts/s fwd+bwd")]


def check_estimator() -> list[Row]:
    import torch

    from threestudio.utils.base import build_module
    from threestudio.utils.misc import cuda_package_error
    from bench_renderer import cameras

    rays_o, rays_d, lights = (t.cuda() for t in cameras(1, 256))

    def render(backend: str):
        torch.manual_seed(0)
        geometry = build_module("implicit-volume", {"density_blob_scale": 20.0}, "system.geometry")
        material = build_module("no-material", {}, "system.material")
        background = build_module("solid-color-background", {}, "system.background")
        renderer = build_module("nerf-volume-renderer", {"num_samples_per_ray": 512, "estimator_backend": backend},
                                "system.renderer", geometry=geometry, material=material, background=background)
        modules = torch.nn.ModuleList([geometry, material, background, renderer]).cuda().train()
        for step in range(0, 272, 16):
            for module in modules:
                module.do_update_step(0, step)
        modules.eval()
        with torch.no_grad():
            out = renderer(rays_o, rays_d, lights)
            seconds = _median_seconds(lambda: renderer(rays_o, rays_d, lights), repeats=3, warmup=1)
        return out, seconds

    ours, ours_s = render("torch")
    rows = [_row("estimator: ours on CUDA", "ok", "", f"{ours_s * 1e3:.1f} ms per 256² frame")]
    error = cuda_package_error("nerfacc")
    if error is not None:
        return rows + [_row("estimator: nerfacc", "skip", error)]
    theirs, theirs_s = render("nerfacc")
    mse = float(((ours["comp_rgb"] - theirs["comp_rgb"]) ** 2).mean())
    psnr = -10 * math.log10(max(mse, 1e-12))
    opacity = float((ours["opacity"] - theirs["opacity"]).abs().max())
    return rows + [_row("estimator: nerfacc vs ours", "ok" if psnr > 40 else "FAIL",
                        f"image PSNR {psnr:.1f} dB, max |opacity diff| {opacity:.2e}",
                        f"{theirs_s * 1e3:.1f} ms per 256² frame")]


def check_rasterizer() -> list[Row]:
    import torch

    from bench_rasterizer import bench, clip_positions, uv_sphere
    from threestudio.models.rasterization import DifferentiableRasterizer
    from threestudio.utils.misc import cuda_package_error

    vertices, faces = uv_sphere(100_000)
    cpu = bench("cpu", vertices, faces, 512, 3, "cpu")
    rows = [_row("rasterizer: our CPU kernel", "ok", "100k triangles, 512²", f"{cpu['fwd+bwd'] * 1e3:.0f} ms fwd+bwd")]
    error = cuda_package_error("nvdiffrast")
    if error is not None:
        return rows + [_row("rasterizer: nvdiffrast", "skip", error)]
    gpu = bench("nvdiffrast", vertices, faces, 512, 5, "cuda")
    ours, theirs = DifferentiableRasterizer("cpu", torch.device("cpu")), DifferentiableRasterizer(
        "nvdiffrast", torch.device("cuda"))
    tri = faces
    a = ours.rasterize(clip_positions(vertices, "cpu"), tri, (512, 512))[0]
    b = theirs.rasterize(clip_positions(vertices, "cuda"), tri.cuda(), (512, 512))[0].cpu()
    same_id = float((a[..., 3] == b[..., 3]).float().mean())
    covered = (a[..., 3] > 0) & (a[..., 3] == b[..., 3])
    depth = float((a[..., 2] - b[..., 2])[covered].abs().max()) if covered.any() else float("nan")
    return rows + [_row("rasterizer: nvdiffrast vs ours", "ok" if same_id > 0.999 else "FAIL",
                        f"same triangle id {same_id:.4%}, max |z/w diff| {depth:.1e}",
                        f"{gpu['fwd+bwd'] * 1e3:.1f} ms fwd+bwd")]


def check_fp16_priors() -> list[Row]:
    import torch

    from bench_sds_mvdream import RandomWeightGuidance  # noqa: F401 - sizes of the full MVDream
    from bench_sv3d_unet import build as build_sv3d_unet

    rows = []
    torch.manual_seed(0)
    from diffusers import AutoencoderKL
    from mvdream import MultiViewUNet2DConditionModel
    from mvdream.convert import convert_unet, convert_vae
    from mvdream.ldm_config import SHIPPED_CONFIGS, load_original_config
    from mvdream.testing import FULL_SD21, original_state_dict

    shapes = original_state_dict(FULL_SD21, device="meta")
    config = load_original_config(str(SHIPPED_CONFIGS["sd-v2.1-base-4view"]), shapes)
    with torch.device("cuda"):
        unet = MultiViewUNet2DConditionModel(**convert_unet(shapes, config)[0]).half().eval()
        vae = AutoencoderKL(**convert_vae(shapes, config)[0]).half().eval()
    with torch.no_grad():
        images = torch.rand(4, 3, 256, 256, device="cuda", dtype=torch.half) * 2 - 1
        latents = vae.encode(images).latent_dist.mode() * 0.18215
        sample = torch.cat([latents, latents])
        out = unet(sample, torch.full((8,), 500, device="cuda"),
                   encoder_hidden_states=torch.randn(8, 77, 1024, device="cuda", dtype=torch.half),
                   camera=torch.randn(8, 16, device="cuda", dtype=torch.half), num_views=4).sample
    finite = bool(torch.isfinite(latents).all() and torch.isfinite(out).all())
    rows.append(_row("fp16 MVDream (UNet 8×4×32², VAE 4×256²)", "ok" if finite else "FAIL",
                     "finite" if finite else "NaN/inf in the output", ""))
    del unet, vae
    torch.cuda.empty_cache()
    unet = build_sv3d_unet("sv3d_p", torch.float16, "cuda")
    with torch.no_grad():
        k = len(unet.added_id_widths)
        x = torch.randn(2, 21, unet.config.in_channels, 72, 72, device="cuda", dtype=torch.half)
        out = unet(x, torch.full((2,), 0.4, device="cuda", dtype=torch.half),
                   torch.randn(2, 1, unet.config.cross_attention_dim, device="cuda", dtype=torch.half),
                   torch.rand(2, 21, k, device="cuda"))
        out = out.sample if hasattr(out, "sample") else out
    finite = bool(torch.isfinite(out).all())
    rows.append(_row("fp16 SV3D_p UNet (CFG, 21×72²)", "ok" if finite else "FAIL",
                     "finite" if finite else "NaN/inf in the output", ""))
    return rows


def check_sv3d_azimuth() -> list[Row]:
    ckpt = os.environ.get("SV3D_CKPT")
    if not ckpt:
        return [_row("sv3d-azimuth", "skip", "needs a real sv3d_u/sv3d_p checkpoint: SV3D_CKPT=/path/x.safetensors")]
    result = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "sv3d_turntable_check.py"), ckpt],
                            capture_output=True, text=True)
    last = (result.stdout.strip().splitlines() or ["no output"])[-1]
    return [_row("sv3d-azimuth", "ok" if result.returncode == 0 else "FAIL", last)]


def _command_check(name: str, argv: list[str], lines: int = 3) -> Callable[[], list[Row]]:
    """A check that runs a benchmark script and keeps the last lines of its table."""

    def run() -> list[Row]:
        command = ["bash", *argv] if argv[0].endswith(".sh") else [sys.executable, *argv]
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        out = [line for line in result.stdout.strip().splitlines() if line.strip()]
        if result.returncode != 0:
            tail = (result.stderr.strip().splitlines() or ["?"])[-1]
            return [_row(name, "FAIL", f"exit {result.returncode}: {tail}")]
        return [_row(name, "ok", line) for line in out[-lines:]]

    return run


# name -> (function, time limit in seconds). Later issues add rows here (rasterizer, training, Hi3D, Diffusion²).
CHECKS: dict[str, tuple[Callable[[], list[Row]], int]] = {
    "env": (check_env, 30),
    "hashgrid": (check_hashgrid, 60),
    "estimator": (check_estimator, 60),
    "rasterizer": (check_rasterizer, 60),
    "fp16-priors": (check_fp16_priors, 90),
    "sds-mvdream": (_command_check("sds-mvdream", ["benchmarks/bench_sds_mvdream.py", "--device", "cuda",
                                                   "--steps", "5", "--warmup", "2"]), 120),
    "sds-sv3d": (_command_check("sds-sv3d", ["benchmarks/bench_sds_sv3d.py", "--image-size", "576",
                                             "--render-size", "128", "--steps", "2"], lines=1), 120),
    "sv3d-azimuth": (check_sv3d_azimuth, 60),
}
# name -> (argv of a benchmark script, .py or .sh, time limit)
EXTRA_CHECKS: dict[str, tuple[list[str], int]] = {
    "sv3d-training": (["benchmarks/gpu_check_sv3d_training.sh"], 120),  # bf16, DeepSpeed ZeRO-2/3, 576² steps
}


# ----------------------------------------------------------------------------------------------------- runner
def all_checks() -> dict[str, tuple[Callable[[], list[Row]], int]]:
    checks = dict(CHECKS)
    for name, (argv, limit) in EXTRA_CHECKS.items():
        checks[name] = (_command_check(name, argv), limit)
    return checks


def run_one(name: str, limit: int) -> list[Row]:
    with tempfile.TemporaryDirectory() as tmp:
        result_path = os.path.join(tmp, "rows.json")
        try:
            proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--only", name, "--result", result_path],
                                  cwd=REPO, capture_output=True, text=True, timeout=limit)
        except subprocess.TimeoutExpired:
            return [_row(name, "FAIL", f"timed out after {limit} s")]
        if proc.returncode != 0 or not os.path.exists(result_path):
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            return [_row(name, "FAIL", f"exit {proc.returncode}: {tail[:160]}")]
        with open(result_path) as fp:
            return json.load(fp)


def print_table(rows: list[Row]) -> None:
    widths = [max(len(str(r[k])) for r in rows + [{"check": "check", "status": "status", "result": "result",
                                                    "figures": "figures"}]) for k in ("check", "status", "result")]
    header = f"{'check':<{widths[0]}}  {'status':<{widths[1]}}  {'result':<{widths[2]}}  figures"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['check']:<{widths[0]}}  {r['status']:<{widths[1]}}  {r['result']:<{widths[2]}}  {r['figures']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checks", nargs="+", default=None, help="run only these checks")
    parser.add_argument("--list", action="store_true", help="list the checks and their time limits")
    parser.add_argument("--budget", type=float, default=360.0,
                        help="seconds after which no new check starts (360 + the longest limit = 8 minutes)")
    parser.add_argument("--only", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    checks = all_checks()
    if args.only:
        rows = checks[args.only][0]()
        with open(args.result, "w") as fp:
            json.dump(rows, fp)
        return 0
    names = args.checks or list(checks)
    unknown = [n for n in names if n not in checks]
    if unknown:
        parser.error(f"unknown check(s) {', '.join(unknown)}; choose from {', '.join(checks)}")
    if args.list:
        for name in names:
            print(f"{name:<16s} {checks[name][1]:>4d} s")
        print(f"{'total limit':<16s} {sum(checks[n][1] for n in names):>4d} s (new checks stop after "
              f"{args.budget:.0f} s)")
        return 0
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; these checks need one GPU (the CPU paths are covered by the tests).",
              file=sys.stderr)
        return 2
    start, rows = time.perf_counter(), []
    for name in names:
        if time.perf_counter() - start > args.budget:
            rows.append(_row(name, "skip", "not started: time budget spent"))
            continue
        t0 = time.perf_counter()
        rows += run_one(name, checks[name][1])
        print(f"[gpu_check] {name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    print_table(rows)
    print(f"\n{torch.cuda.get_device_name(0)}; {time.perf_counter() - start:.0f} s in all")
    return 1 if any(r["status"] == "FAIL" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
