"""Render a moving procedural object to a views x frames image matrix (RGBA PNG + per-frame transforms).

    python scripts/make_example_4d.py                               # rewrites the bundled load/example_4d
    python scripts/make_example_4d.py --seed 7 --out /tmp/moving7     # an unseen moving object
    python scripts/make_example_4d.py --layout per-frame --out /tmp/x # DIR/frame_YY/transforms.json layout

Layouts (both read by `multiview-video-datamodule`):
- `diffusion2` (default, the layout `diffusion2.sample` writes): `view_XX/frame_YY.png` and one
  `transforms_frame_YY.json` per frame in DIR, `file_path` relative to DIR;
- `per-frame`: `frame_YY/transforms.json` with `frame_YY/view_XX.png` next to it.
Each transforms file: `camera_angle_x`, `frames[i].file_path` / `transform_matrix` (c2w, z-up world, OpenGL
camera axes, DESIGN.md §3), top-level `time` = YY / (n_frames - 1) and `frame_index` = YY. The cameras
are fixed over time (a synchronised rig): `n_views` spread over the sphere, then `n_holdout_views`
extra views (the last view indices) for evaluation. `scene.json` is the analytic moving object.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_example import camera_c2w, frame_entry, test_cameras, train_cameras, write_view  # noqa: E402
from procedural_motion import MovingScene, example_moving_scene, random_moving_scene  # noqa: E402

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "load", "example_4d")
LAYOUTS = ("diffusion2", "per-frame")


def frame_time(index: int, n_frames: int) -> float:
    return index / (n_frames - 1) if n_frames > 1 else 0.0


def make_dataset_4d(out: str, scene: MovingScene, n_views: int = 12, n_holdout_views: int = 2, n_frames: int = 10,
                    size: int = 96, fov_deg: float = 40.0, distance: float = 2.0, supersample: int = 3,
                    layout: str = "diffusion2", seed: int = 0) -> str:
    """Render `scene` into `out` in `layout`; returns `out`."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got '{layout}'.")
    os.makedirs(out, exist_ok=True)
    cams = train_cameras(n_views) + (test_cameras(n_holdout_views, seed) if n_holdout_views else [])
    c2ws = [camera_c2w(e, a, distance) for e, a in cams]
    for f in range(n_frames):
        t = frame_time(f, n_frames)
        frame_scene = scene.at(t)
        folder = out if layout == "diffusion2" else os.path.join(out, f"frame_{f:02d}")
        entries = []
        for v, ((elevation, azimuth), c2w) in enumerate(zip(cams, c2ws)):
            name = f"view_{v:02d}/frame_{f:02d}.png" if layout == "diffusion2" else f"view_{v:02d}.png"
            write_view(os.path.join(folder, name), frame_scene, c2w, size, fov_deg, supersample)
            entries.append(frame_entry(name, elevation, azimuth, c2w))
        meta = {"camera_angle_x": math.radians(fov_deg), "time": t, "frame_index": f, "frames": entries}
        json_path = (os.path.join(out, f"transforms_frame_{f:02d}.json") if layout == "diffusion2"
                     else os.path.join(folder, "transforms.json"))
        with open(json_path, "w") as fp:
            json.dump(meta, fp, indent=1)
    with open(os.path.join(out, "scene.json"), "w") as fp:
        fp.write(scene.to_json())
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=None, help="random moving object (default: the bundled example)")
    parser.add_argument("--layout", default="diffusion2", choices=LAYOUTS)
    parser.add_argument("--n-views", type=int, default=12)
    parser.add_argument("--n-holdout-views", type=int, default=2)
    parser.add_argument("--n-frames", type=int, default=10)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--fov", type=float, default=40.0)
    parser.add_argument("--distance", type=float, default=2.0)
    parser.add_argument("--supersample", type=int, default=3)
    args = parser.parse_args(argv)
    scene = example_moving_scene() if args.seed is None else random_moving_scene(args.seed)
    out = make_dataset_4d(args.out, scene, args.n_views, args.n_holdout_views, args.n_frames, args.size, args.fov,
                          args.distance, args.supersample, args.layout, seed=args.seed or 0)
    print(f"wrote {out}: {args.n_views}+{args.n_holdout_views} views x {args.n_frames} frames at {args.size}² "
          f"({args.layout} layout), bounding radius {scene.bounding_radius():.3f}")


if __name__ == "__main__":
    main()
