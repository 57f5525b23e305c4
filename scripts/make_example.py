"""Render a procedural coloured-primitive object to a NeRF-synthetic style dataset (RGBA PNG + transforms json).

    python scripts/make_example.py                       # rewrites the bundled example in load/
    python scripts/make_example.py --seed 7 --out /tmp/obj7   # an unseen object of the same kind

Writes `transforms_{train,val,test}.json` (camera_angle_x, c2w `transform_matrix` in the z-up world
with OpenGL camera axes, docs/architecture.md §3), `train/*.png`, `test/*.png` (validation reuses the first test
views) and `scene.json` (the analytic object, ground truth for benchmarks/bench_reconstruction.py).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch  # noqa: E402
from procedural_scene import Scene, example_scene, random_scene, render  # noqa: E402

from threestudio.utils.ops import orbit_c2w  # noqa: E402  (the project's one camera maths)

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "load", "example_primitives")
GOLDEN_ANGLE = 180.0 * (3.0 - math.sqrt(5.0))


def train_cameras(n: int) -> list[tuple[float, float]]:
    """(elevation, azimuth) pairs spread over the sphere above -25°: golden-angle azimuths,
    elevations evenly spaced in sin."""
    sin_lo, sin_hi = math.sin(math.radians(-25.0)), math.sin(math.radians(75.0))
    return [(math.degrees(math.asin(sin_lo + (sin_hi - sin_lo) * (i + 0.5) / n)), (i * GOLDEN_ANGLE) % 360.0)
            for i in range(n)]


def test_cameras(n: int, seed: int) -> list[tuple[float, float]]:
    """Held-out views: random elevations in [-10, 50]°, azimuths offset from the training ones."""
    rng = np.random.default_rng(seed + 1000)
    return [(float(rng.uniform(-10.0, 50.0)), float((i + 0.5) * 360.0 / n + rng.uniform(-10, 10)) % 360.0)
            for i in range(n)]


def camera_c2w(elevation: float, azimuth: float, distance: float) -> np.ndarray:
    """(4, 4) camera-to-world matrix of the orbit camera (degrees), by the project's camera maths."""
    return orbit_c2w(*(torch.tensor([float(v)], dtype=torch.float64) for v in (elevation, azimuth, distance)))[0].numpy()


def write_view(path: str, scene: Any, c2w: np.ndarray, size: int, fov: float, supersample: int) -> None:
    """Render `scene` (anything with the Scene ray interface) from `c2w` to an RGBA PNG at `path`."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rgba = render(scene, c2w, size, fov, supersample)
    Image.fromarray((rgba * 255 + 0.5).clip(0, 255).astype(np.uint8), "RGBA").save(path, optimize=True)


def frame_entry(file_path: str, elevation: float, azimuth: float, c2w: np.ndarray) -> dict:
    """One `frames[i]` item of a transforms file."""
    return {"file_path": file_path, "elevation_deg": round(elevation, 4), "azimuth_deg": round(azimuth, 4),
            "transform_matrix": np.round(c2w, 8).tolist()}


def write_split(out: str, split: str, folder: str, scene: Scene, cams: list, size: int, fov: float,
                distance: float, supersample: int, render_images: bool = True) -> list[dict]:
    frames = []
    os.makedirs(os.path.join(out, folder), exist_ok=True)
    for i, (elevation, azimuth) in enumerate(cams):
        c2w = camera_c2w(elevation, azimuth, distance)
        name = f"{folder}/r_{i:03d}.png"
        if render_images:
            write_view(os.path.join(out, name), scene, c2w, size, fov, supersample)
        frames.append(frame_entry(f"./{name}", elevation, azimuth, c2w))
    return frames


def make_dataset(out: str, scene: Scene, n_train: int = 24, n_test: int = 8, n_val: int = 4, size: int = 128,
                 fov_deg: float = 40.0, distance: float = 2.0, supersample: int = 3, seed: int = 0) -> str:
    """Render `scene` into `out` and return `out`."""
    os.makedirs(out, exist_ok=True)
    camera_angle_x = math.radians(fov_deg)
    train = write_split(out, "train", "train", scene, train_cameras(n_train), size, fov_deg, distance, supersample)
    test = write_split(out, "test", "test", scene, test_cameras(n_test, seed), size, fov_deg, distance, supersample)
    for split, frames in (("train", train), ("val", test[:n_val]), ("test", test)):
        with open(os.path.join(out, f"transforms_{split}.json"), "w") as fp:
            json.dump({"camera_angle_x": camera_angle_x, "frames": frames}, fp, indent=1)
    with open(os.path.join(out, "scene.json"), "w") as fp:
        fp.write(scene.to_json())
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=None, help="random object (default: the bundled example)")
    parser.add_argument("--n-train", type=int, default=24)
    parser.add_argument("--n-test", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--fov", type=float, default=40.0)
    parser.add_argument("--distance", type=float, default=2.0)
    parser.add_argument("--supersample", type=int, default=3)
    args = parser.parse_args(argv)
    scene = example_scene() if args.seed is None else random_scene(args.seed)
    out = make_dataset(args.out, scene, args.n_train, args.n_test, min(4, args.n_test), args.size, args.fov,
                       args.distance, args.supersample, seed=args.seed or 0)
    print(f"wrote {out} ({args.n_train} train + {args.n_test} test views at {args.size}², "
          f"bounding radius {scene.bounding_radius():.3f})")


if __name__ == "__main__":
    main()
