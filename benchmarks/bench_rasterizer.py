"""Rasterizer speed: rasterize + interpolate + antialias, forward and backward, per backend.

    python benchmarks/bench_rasterizer.py [--faces 100000] [--res 512] [--repeats 5] [--threads N]

The mesh is a UV sphere of about `--faces` triangles (radius 0.8, z up) seen from distance 2.5 with a
40° field of view, i.e. the object fills most of the frame, as in refinement renders. One step: clip
positions (with gradient) -> rasterize -> interpolate vertex colours -> antialias (including building
the edge topology, as a refinement step must: its faces change every step) -> sum(out * weights) ->
backward to the positions. Medians of wall time and of process CPU time (all threads).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_hashgrid import timed  # noqa: E402

from threestudio.models.rasterization import DifferentiableRasterizer, available_backends  # noqa: E402
from threestudio.utils.ops import get_mvp_matrix, get_projection_matrix, orbit_c2w  # noqa: E402


def uv_sphere(n_faces: int, radius: float = 0.8) -> tuple[torch.Tensor, torch.Tensor]:
    """Vertices (V, 3) and faces (F, 3) int32 of a closed UV sphere with about n_faces triangles."""
    import trimesh

    count = max(4, int(math.sqrt(n_faces / 4)))  # trimesh: about 4 * count^2 faces
    mesh = trimesh.creation.uv_sphere(radius=radius, count=[count, count])
    return torch.tensor(mesh.vertices, dtype=torch.float32), torch.tensor(mesh.faces, dtype=torch.int32)


def clip_positions(vertices: torch.Tensor, device: str) -> torch.Tensor:
    c2w = orbit_c2w(torch.tensor([20.0]), torch.tensor([30.0]), torch.tensor([2.5]))
    mvp = get_mvp_matrix(c2w, get_projection_matrix(torch.deg2rad(torch.tensor([40.0])), 1.0))
    homo = torch.cat([vertices, torch.ones_like(vertices[:, :1])], dim=-1)
    return (homo @ mvp[0].T)[None].to(device)


def bench(backend: str, vertices: torch.Tensor, faces: torch.Tensor, res: int, repeats: int, device: str) -> dict:
    r = DifferentiableRasterizer(backend, torch.device(device))
    pos = clip_positions(vertices, device)
    tri = faces.to(device)
    colors = (vertices * 0.5 + 0.5).to(device)
    weights = torch.rand(1, res, res, 3, generator=torch.Generator().manual_seed(0)).to(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def forward():
        with torch.no_grad():
            rast = r.rasterize(pos, tri, (res, res))
            r.antialias(r.interpolate(colors, rast, tri), rast, pos, tri, r.construct_topology(tri))

    def forward_backward():
        p = pos.clone().requires_grad_(True)
        rast = r.rasterize(p, tri, (res, res))
        out = r.antialias(r.interpolate(colors, rast, tri), rast, p, tri, r.construct_topology(tri))
        (out * weights).sum().backward()

    reps = repeats if backend != "torch" else min(repeats, 2)
    fwd, fwd_cpu = timed(forward, reps, sync)
    both, both_cpu = timed(forward_backward, reps, sync)
    return {"backend": r.backend, "fwd": fwd, "fwd+bwd": both, "fwd cpu": fwd_cpu, "fwd+bwd cpu": both_cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faces", type=int, default=100_000)
    parser.add_argument("--res", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip-reference", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    backends = available_backends()
    build = time.perf_counter() - start
    vertices, faces = uv_sphere(args.faces)
    env = ", ".join(f"{k}={os.environ.get(k, 'unset')}" for k in ("THP_MEM_ALLOC_ENABLE", "OMP_WAIT_POLICY"))
    print(f"# {len(faces)} triangles, {args.res}x{args.res}, {torch.get_num_threads()} CPU threads, load average "
          f"{os.getloadavg()[0]:.1f}, {env}, torch {torch.__version__}")
    print(f"# CPU kernel: {'loaded' if backends['cpu'] else 'unavailable: ' + str(backends['cpu_error'])} in "
          f"{build:.1f} s")
    rows = []
    if not args.skip_reference:
        rows.append(("torch (reference)", bench("torch", vertices, faces, args.res, args.repeats, "cpu")))
    if backends["cpu"]:
        rows.append(("cpu (C++/OpenMP)", bench("cpu", vertices, faces, args.res, args.repeats, "cpu")))
    if backends["nvdiffrast"]:
        rows.append(("nvdiffrast (cuda)", bench("nvdiffrast", vertices, faces, args.res, args.repeats, "cuda")))
    if torch.cuda.is_available():
        rows.append(("torch (reference, cuda)", bench("torch", vertices, faces, args.res, args.repeats, "cuda")))
    print()
    print(f"| {'backend':<24} | {'fwd (ms)':>9} | {'fwd+bwd (ms)':>12} | {'fwd CPU-s':>9} | {'fwd+bwd CPU-s':>13} "
          f"| {'speed-up fwd+bwd':>16} |")
    print(f"|{'-' * 26}|{'-' * 11}|{'-' * 14}|{'-' * 11}|{'-' * 15}|{'-' * 18}|")
    base = rows[0][1]["fwd+bwd"] if rows and rows[0][0].startswith("torch") else None
    for name, r in rows:
        speedup = f"{base / r['fwd+bwd']:.1f}x" if base else "-"
        print(f"| {name:<24} | {r['fwd'] * 1e3:>9.1f} | {r['fwd+bwd'] * 1e3:>12.1f} | {r['fwd cpu']:>9.3f} | "
              f"{r['fwd+bwd cpu']:>13.3f} | {speedup:>16} |")


if __name__ == "__main__":
    main()
