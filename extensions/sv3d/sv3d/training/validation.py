"""Validation orbits of held-out objects during training: a PNG grid (input | generated views, ground truth
below) and an mp4 per object, sampled with the export version's recipe (guider, cond_aug, steps)."""

from __future__ import annotations

import os
from typing import Dict, List, Optional

import numpy as np
import torch
from PIL import Image

from ..config import ModelSpec
from ..pipeline import SV3DPipeline
from .dataset import OrbitClipDataset


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] or [0, 1] (already mapped) -> (N, H, W, 3) uint8."""
    return (x.clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)


@torch.no_grad()
def run_validation(
    out_dir: str,
    unet: torch.nn.Module,
    vae: torch.nn.Module,
    image_encoder: torch.nn.Module,
    spec: ModelSpec,
    dataset: OrbitClipDataset,
    num_objects: int,
    num_steps: int,
    condition_last: bool,
    cond_aug: Optional[float] = None,
    min_scale: Optional[float] = None,
    max_scale: Optional[float] = None,
    fps: int = 7,
    seed: int = 23,
) -> List[Dict[str, str]]:
    """Sample one orbit per held-out object (its first view, no roll) and write `<out_dir>/<i>_grid.png` and
    `<out_dir>/<i>.mp4`; returns the written paths."""
    import imageio

    os.makedirs(out_dir, exist_ok=True)
    was_training = unet.training
    pipe = SV3DPipeline(unet, vae, image_encoder, spec)
    written = []
    try:
        for i in range(min(int(num_objects), len(dataset))):
            item = dataset[i]
            frames = item["frames"]  # (F, 3, R, R), condition view first
            f = frames.shape[0]
            cond = Image.fromarray(_to_uint8((frames[:1] + 1) / 2)[0])
            elev = item["elevation_deg"].tolist()
            az = item["azimuth_deg"].tolist()
            if condition_last:  # SV3D order: the input view is the last frame
                elev, az = elev[1:] + elev[:1], az[1:] + az[:1]
                gt = torch.roll(frames, -1, dims=0)
            else:
                gt = frames
            out = pipe(cond, num_frames=f, num_steps=num_steps, elevations_deg=elev, azimuths_deg=az, cond_aug=cond_aug,
                       seed=seed, min_scale=min_scale, max_scale=max_scale, preprocess=False, decoding_t=f)
            gen = _to_uint8(out.frames)
            real = _to_uint8((gt + 1) / 2)
            blank = np.full_like(real[0], 255)
            top = np.concatenate([np.asarray(cond)] + list(gen), axis=1)
            bottom = np.concatenate([blank] + list(real), axis=1)
            grid = os.path.join(out_dir, f"{i:02d}_grid.png")
            Image.fromarray(np.concatenate([top, bottom], axis=0)).save(grid)
            mp4 = os.path.join(out_dir, f"{i:02d}.mp4")
            imageio.mimwrite(mp4, list(gen), fps=fps, macro_block_size=1)
            written.append({"grid": grid, "video": mp4})
    finally:
        unet.train(was_training)
    return written
