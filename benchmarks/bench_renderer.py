"""NeRF renderer cost: one training render (forward + backward) of 8 views at 64x64 with a warm
occupancy grid, and one 256x256 test frame.

    python benchmarks/bench_renderer.py [--repeats 3] [--threads N]

Geometry/renderer configs are the MVDream-threestudio ones (implicit-volume with the default hash
grid, blob_magic3d density bias, 512 samples per ray, 32^3 occupancy grid). Cameras follow the
MVDream recipe (elevation 15 deg, fovy 40 deg, distance 0.9 / tan(fovy / 2), 8 azimuths).
Scenes:
- "init blob": the geometry as initialised (soft, semi-transparent blob of radius ~0.5) - what
  every run starts from and the most samples per ray;
- "opaque blob": density_blob_scale 1000 - an opaque object like a trained one (rays stop soon
  after the surface).
Materials: no-material (MVDream's default) and diffuse-with-point-light with analytic normals
(MVDream's shading stage: double backward through the field).
"""
from __future__ import annotations

import argparse
import math
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
from threestudio.utils.base import build_module  # noqa: E402
from threestudio.utils.ops import fov_to_focal, get_ray_directions, get_rays, orbit_c2w  # noqa: E402


def cameras(n_views: int, size: int):
    fovy = 40.0
    distance = 0.9 / math.tan(math.radians(fovy) / 2)
    c2w = orbit_c2w(torch.full((n_views,), 15.0), torch.arange(n_views) * 360.0 / n_views,
                    torch.full((n_views,), distance))
    rays_o, rays_d = get_rays(get_ray_directions(size, size, fov_to_focal(math.radians(fovy), size)), c2w)
    return rays_o, rays_d, c2w[:, :3, 3] * 1.5


def build(scene: str, material: str):
    torch.manual_seed(0)
    geo_cfg = {"normal_type": "analytic"}
    if scene == "opaque blob":
        geo_cfg["density_blob_scale"] = 1000.0
    geometry = build_module("implicit-volume", geo_cfg, "system.geometry")
    mat_cfg = {"ambient_only_steps": 0, "diffuse_prob": 1.0, "textureless_prob": 0.0} if material != "no-material" else {}
    mat = build_module(material, mat_cfg, "system.material")
    background = build_module("neural-environment-map-background", {"color_activation": "sigmoid"}, "system.background")
    renderer = build_module("nerf-volume-renderer", {"num_samples_per_ray": 512}, "system.renderer",
                            geometry=geometry, material=mat, background=background)
    modules = torch.nn.ModuleList([geometry, mat, background, renderer])
    modules.train()
    for step in range(0, 272, 16):  # warm the occupancy grid (warm-up phase visits every cell)
        for m in modules:
            m.do_update_step(0, step)
    return modules, renderer


def median_time(fn, repeats: int) -> tuple[float, float]:
    fn()
    walls, cpus = [], []
    for _ in range(repeats):
        start, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--train-size", type=int, default=64)
    parser.add_argument("--test-size", type=int, default=256)
    parser.add_argument("--scenes", nargs="+", default=["init blob", "opaque blob"],
                        choices=["init blob", "opaque blob"])
    parser.add_argument("--materials", nargs="+", default=["no-material", "diffuse-with-point-light-material"],
                        choices=["no-material", "diffuse-with-point-light-material"])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    hash_grid_cpu.load_kernel()
    env = ", ".join(f"{k}={os.environ.get(k, 'unset')}" for k in ("THP_MEM_ALLOC_ENABLE", "OMP_WAIT_POLICY"))
    print(f"# {torch.get_num_threads()} CPU threads, load average {os.getloadavg()[0]:.1f}, {env}, "
          f"torch {torch.__version__}")
    rays_o, rays_d, lights = cameras(args.views, args.train_size)
    test_o, test_d, test_l = cameras(1, args.test_size)
    rows = []
    for scene in args.scenes:
        for material in args.materials:
            modules, renderer = build(scene, material)
            params = [p for p in modules.parameters() if p.requires_grad]
            samples = []

            def train_step():
                for p in params:
                    p.grad = None
                out = renderer(rays_o, rays_d, lights)
                samples.append(out["weights"].shape[0])
                out["comp_rgb"].mean().backward()

            wall, cpu = median_time(train_step, args.repeats)
            modules.eval()

            def test_frame():
                with torch.no_grad():
                    renderer(test_o, test_d, test_l)

            test_wall, _ = median_time(test_frame, args.repeats)
            rows.append((scene, material.replace("-material", ""), samples[-1], wall, cpu, test_wall))
    print()
    print(f"| {'scene':<11} | {'material':<26} | {'samples':>8} | {'train fwd+bwd (s)':>17} | {'CPU-s':>6} "
          f"| {'test frame (ms)':>15} |")
    print(f"|{'-' * 13}|{'-' * 28}|{'-' * 10}|{'-' * 19}|{'-' * 8}|{'-' * 17}|")
    for scene, material, n, wall, cpu, test_wall in rows:
        print(f"| {scene:<11} | {material:<26} | {n:>8} | {wall:>17.3f} | {cpu:>6.2f} | {test_wall * 1e3:>15.0f} |")
    print(f"\n# train: {args.views} views x {args.train_size}^2 rays; test: 1 view x {args.test_size}^2 rays, "
          "no grad; CPU-s = process CPU time (all threads) per training render")


if __name__ == "__main__":
    main()
