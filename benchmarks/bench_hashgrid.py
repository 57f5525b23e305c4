"""Hash-grid encoding throughput: points/s forward and forward+backward for every available backend.

    python benchmarks/bench_hashgrid.py [--points 262144] [--repeats 5] [--threads N]

Default config of implicit-volume (16 levels x 2 features, 2^19 entries per level, base 16, scale
1.447). Points are uniform in [0, 1]^3 (random table access: the hardest case; samples of a
volume render are spatially coherent and run faster). Backward = gradient of the table (as in
training), and also with position gradients (analytic normals need them).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# CPU runtime settings read once when torch loads (override them in the environment to compare):
# idle OpenMP workers sleep instead of spinning - spinning workers starve the main thread as soon
# as anything else runs on a 2-core machine - and large tensors get transparent huge pages, which
# removes most first-touch page-fault cost of the big per-step buffers.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import torch  # noqa: E402

from threestudio.models.encodings import hash_grid_cpu  # noqa: E402
from threestudio.models.encodings.hash_grid import HashGridEncoding, tcnn_available  # noqa: E402

CONFIG = {"otype": "HashGrid", "n_levels": 16, "n_features_per_level": 2, "log2_hashmap_size": 19,
          "base_resolution": 16, "per_level_scale": 1.447269237440378}


def timed(fn, repeats: int, sync) -> tuple[float, float]:
    """Median wall time and median process CPU time of fn()."""
    fn()  # warm-up (and kernel build)
    sync()
    walls, cpus = [], []
    for _ in range(repeats):
        start, cpu = time.perf_counter(), time.process_time()
        fn()
        sync()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def bench_backend(backend: str, n_points: int, repeats: int, device: str) -> dict:
    torch.manual_seed(0)
    enc = HashGridEncoding(3, {**CONFIG, "backend": backend}).to(device)
    x = torch.rand(n_points, 3, device=device)
    x_grad = x.clone().requires_grad_(True)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def forward():
        with torch.no_grad():
            enc(x)

    def forward_backward():
        enc.zero_grad(set_to_none=True)
        enc(x).sum().backward()

    def forward_backward_x():
        enc.zero_grad(set_to_none=True)
        enc(x_grad).sum().backward()

    reps = max(1, repeats if backend != "torch" else min(repeats, 2))
    fwd, fwd_cpu = timed(forward, reps, sync)
    both, both_cpu = timed(forward_backward, reps, sync)
    with_x, _ = timed(forward_backward_x, reps, sync)
    return {"backend": enc.active_backend, "fwd": n_points / fwd, "fwd+bwd": n_points / both,
            "fwd+bwd (+x)": n_points / with_x, "fwd per cpu-s": n_points / fwd_cpu,
            "fwd+bwd per cpu-s": n_points / both_cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=2 ** 18)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch/OpenMP threads (default: torch's)")
    parser.add_argument("--skip-reference", action="store_true", help="skip the slow pure-PyTorch reference")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    start = time.perf_counter()
    lib = hash_grid_cpu.load_kernel()
    build = time.perf_counter() - start
    env = ", ".join(f"{k}={os.environ.get(k, 'unset')}" for k in ("THP_MEM_ALLOC_ENABLE", "OMP_WAIT_POLICY"))
    print(f"# {args.points} points, {torch.get_num_threads()} CPU threads, load average "
          f"{os.getloadavg()[0]:.1f}, {env}, torch {torch.__version__}")
    print(f"# fused CPU kernel: {'loaded' if lib else 'unavailable: ' + str(hash_grid_cpu.kernel.error)} "
          f"in {build:.1f} s (first build compiles, later runs reuse the cache)")
    rows = []
    if not args.skip_reference:
        rows.append(("torch (reference)", bench_backend("torch", args.points, args.repeats, "cpu")))
    if lib is not None:
        rows.append(("cpu_fused", bench_backend("cpu_fused", args.points, args.repeats, "cpu")))
    if torch.cuda.is_available():
        rows.append(("torch (reference, cuda)", bench_backend("torch", args.points, args.repeats, "cuda")))
        if tcnn_available():
            rows.append(("tcnn (cuda)", bench_backend("tcnn", args.points, args.repeats, "cuda")))
    print()
    # "per CPU-second": points per second of process CPU time summed over threads; less sensitive
    # to other processes on a shared machine than wall-clock rates
    print(f"| {'backend':<24} | {'fwd (M pts/s)':>13} | {'fwd+bwd (M pts/s)':>17} | {'fwd+bwd incl. d/dx':>18} "
          f"| {'fwd (M/CPU-s)':>13} | {'fwd+bwd (M/CPU-s)':>17} |")
    print(f"|{'-' * 26}|{'-' * 15}|{'-' * 19}|{'-' * 20}|{'-' * 15}|{'-' * 19}|")
    for name, r in rows:
        print(f"| {name:<24} | {r['fwd'] / 1e6:>13.3f} | {r['fwd+bwd'] / 1e6:>17.3f} | {r['fwd+bwd (+x)'] / 1e6:>18.3f} "
              f"| {r['fwd per cpu-s'] / 1e6:>13.3f} | {r['fwd+bwd per cpu-s'] / 1e6:>17.3f} |")


if __name__ == "__main__":
    main()
