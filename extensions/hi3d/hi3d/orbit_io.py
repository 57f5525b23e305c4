"""Writing and reading the orbit folders of the stages (frames/NNN.png, video.mp4, transforms.json)."""

from __future__ import annotations

import glob
import os
from typing import List, Optional

import numpy as np
import torch
from PIL import Image

from sv3d.cameras import write_transforms_json

NUM_VIEWS = 16


def hi3d_azimuths_deg(num_frames: int = NUM_VIEWS) -> List[float]:
    """Frame i at i * 360 / T degrees: frame 0 is the input view (Hi3D's orbit starts at the input, unlike SV3D's).
    The turning direction is taken as the toolkit's +azimuth (not checked against the real weights)."""
    return [i * 360.0 / num_frames for i in range(num_frames)]


def save_orbit(frames: torch.Tensor, out_dir: str, elevation_deg: float, fov_deg: float, distance: float,
               fps: int = 8) -> dict:
    """frames (T, 3, H, W) in [0, 1] -> out_dir/frames/NNN.png, video.mp4, transforms.json."""
    import imageio

    os.makedirs(os.path.join(out_dir, "frames"), exist_ok=True)
    video = (frames.permute(0, 2, 3, 1).numpy() * 255.0).round().astype(np.uint8)
    names = []
    for i, frame in enumerate(video):
        name = os.path.join("frames", f"{i:03d}.png")
        Image.fromarray(frame).save(os.path.join(out_dir, name))
        names.append(name)
    mp4 = os.path.join(out_dir, "video.mp4")
    imageio.mimwrite(mp4, list(video), fps=fps, macro_block_size=1)
    t = len(names)
    tj = os.path.join(out_dir, "transforms.json")
    write_transforms_json(tj, names, [float(elevation_deg)] * t, hi3d_azimuths_deg(t), fov_deg, distance, video.shape[2], video.shape[1])
    return {"frames": [os.path.join(out_dir, n) for n in names], "video": mp4, "transforms": tj}


def read_orbit_frames(out_dir: str) -> Optional[List[Image.Image]]:
    files = sorted(glob.glob(os.path.join(out_dir, "frames", "*.png")))
    return [Image.open(f).convert("RGB") for f in files] if files else None


def read_video_frames(path: str, last: int = NUM_VIEWS) -> List[Image.Image]:
    """The last `last` frames of an mp4 (the reference's stage-2 input is stage 1's first.mp4)."""
    import imageio

    frames = [Image.fromarray(f[..., :3]) for f in imageio.mimread(path, memtest=False)]
    if len(frames) < last:
        raise ValueError(f"{path!r} has {len(frames)} frames, stage 2 needs {last}")
    return frames[-last:]
