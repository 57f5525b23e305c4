"""Stage 1: one image -> 16-view orbit at 512² (Hi3D's pipeline_i2v_eval_v01.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from sv3d.sampling import linear_guidance_scales


@dataclass
class OrbitOutput:
    """frames (T, 3, H, W) in [0, 1] (frame 0 faces the input view); latents (T, 4, h, w) scaled."""

    frames: torch.Tensor
    latents: torch.Tensor
    elevation_deg: int
    aesthetic_score: Optional[float] = None


def stage1_vector_ids(aesthetic_score: float, elevation_deg: int, cond_aug: float) -> torch.Tensor:
    """(1, 3) raw ids in slot order [aesthetic | elevation | cond_aug]; the UNet embeds them (768 wide)."""
    return torch.tensor([[float(aesthetic_score), float(int(elevation_deg)), float(cond_aug)]])


@torch.no_grad()
def sample_orbit(
    pipe,
    image: torch.Tensor,
    elevation_deg: int = 0,
    num_steps: Optional[int] = None,
    seed: int = 23,
    cond_aug: Optional[float] = None,
    aesthetic_score: Optional[float] = None,
    min_scale: Optional[float] = None,
    max_scale: Optional[float] = None,
    num_frames: Optional[int] = None,
    decoding_t: int = 4,
    cfg_batch: bool = True,
    callback=None,
) -> OrbitOutput:
    """image (1, 3, H, W) in [-1, 1] (white background, H = W = 512 for the released model)."""
    spec = pipe.spec
    if spec.version != "hi3d_stage1":
        raise ValueError(f"sample_orbit needs the stage-1 model, got {spec.version}")
    if int(elevation_deg) != elevation_deg:
        raise ValueError(f"the elevation is an integer number of degrees (trained on -10..40), got {elevation_deg}")
    num_frames = spec.num_frames if num_frames is None else int(num_frames)
    cond_aug = spec.cond_aug if cond_aug is None else float(cond_aug)
    x = image.to(pipe.device, torch.float32)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    # draw order as the reference: conditioning-frame noise, then the latent noise
    noisy = x + cond_aug * torch.randn(x.shape, generator=gen).to(pipe.device)
    context = pipe.encode_image(x)
    concat = pipe.encode_condition_latent(noisy)
    score = float(pipe.aesthetic(x)[0]) if aesthetic_score is None else float(aesthetic_score)
    ids = stage1_vector_ids(score, int(elevation_deg), cond_aug).to(pipe.device)
    lo = spec.min_scale if min_scale is None else min_scale
    hi = spec.max_scale if max_scale is None else max_scale
    scales = linear_guidance_scales(num_frames, lo, hi).to(pipe.device)
    steps = spec.num_steps if num_steps is None else int(num_steps)
    latents = pipe.sample_latents(concat, context, ids, scales, steps, gen, callback=callback, cfg_batch=cfg_batch)[0]
    frames = ((pipe.decode_latents(latents, decoding_t) + 1.0) / 2.0).clamp(0.0, 1.0)
    return OrbitOutput(frames=frames.cpu(), latents=latents.cpu(), elevation_deg=int(elevation_deg), aesthetic_score=score)
