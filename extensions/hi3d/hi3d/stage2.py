"""Stage 2: the 16-view orbit -> 1024² refinement with depth, anchored to the stage-1 frames
(Hi3D's pipeline_i2v_eval_v02.py)."""

from __future__ import annotations

from typing import Optional

import torch

from sv3d.sampling import linear_guidance_scales

from .anchoring import anchored_pre_step
from .stage1 import OrbitOutput


def stage2_vector_ids(elevation_deg: int, cond_aug: float) -> torch.Tensor:
    """(1, 2) raw ids in slot order [elevation | cond_aug]; the UNet embeds them (512 wide)."""
    return torch.tensor([[float(int(elevation_deg)), float(cond_aug)]])


@torch.no_grad()
def stage2_condition(pipe, noisy: torch.Tensor, chunk: Optional[int] = 1) -> torch.Tensor:
    """(T, 3, H, W) noised frames -> (1, T, 13, h, w) per-frame concat = [depth 9 | condition latent 4]."""
    depth = pipe.depth(noisy.to(pipe.device), chunk=chunk)
    latents = pipe.encode_condition_latents(noisy.to(pipe.device), chunk=chunk)
    return torch.cat([depth.to(latents.dtype), latents], dim=1)[None]


@torch.no_grad()
def refine_orbit(
    pipe,
    frames: torch.Tensor,
    elevation_deg: int = 0,
    num_steps: Optional[int] = None,
    seed: int = 23,
    cond_aug: Optional[float] = None,
    min_scale: Optional[float] = None,
    max_scale: Optional[float] = None,
    anchor_power: Optional[float] = None,
    decoding_t: int = 1,
    encode_chunk: Optional[int] = 1,
    cfg_batch: bool = True,
    callback=None,
) -> OrbitOutput:
    """frames (T, 3, H, W) in [-1, 1] at the refiner's resolution (1024² released), frame 0 = the input image.

    The unconditional branch zeroes the CLIP embedding and the whole 13-channel concat (depth included: it shares
    the reference's `cond_frames` input). Random draws in the reference's order: the initial noise eps0, the
    anchors' posterior samples, the conditioning-frame noise."""
    spec = pipe.spec
    if spec.version != "hi3d_stage2":
        raise ValueError(f"refine_orbit needs the stage-2 model, got {spec.version}")
    if frames.dim() != 4 or frames.shape[1] != 3:
        raise ValueError(f"frames must be (T, 3, H, W), got {tuple(frames.shape)}")
    t, _, h, w = frames.shape
    cond_aug = spec.cond_aug if cond_aug is None else float(cond_aug)
    steps = spec.num_steps if num_steps is None else int(num_steps)
    power = spec.extra["anchor_power"] if anchor_power is None else float(anchor_power)
    x = frames.to(pipe.device, torch.float32)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    eps0 = torch.randn((1, t, 4, h // 8, w // 8), generator=gen).to(pipe.device)
    anchors = pipe.encode_first_stage(x, gen, chunk=encode_chunk)[None]
    noisy = x + cond_aug * torch.randn(x.shape, generator=gen).to(pipe.device)
    context = pipe.encode_image(x[:1])
    concat = stage2_condition(pipe, noisy, encode_chunk)
    ids = stage2_vector_ids(int(elevation_deg), cond_aug).to(pipe.device)
    lo = spec.min_scale if min_scale is None else min_scale
    hi = spec.max_scale if max_scale is None else max_scale
    scales = linear_guidance_scales(t, lo, hi).to(pipe.device)
    latents = pipe.sample_latents(concat, context, ids, scales, steps, gen, callback=callback, noise=eps0,
                                  pre_step=anchored_pre_step(anchors, eps0, steps, power), cfg_batch=cfg_batch)[0]
    out = ((pipe.decode_latents(latents, decoding_t) + 1.0) / 2.0).clamp(0.0, 1.0)
    return OrbitOutput(frames=out.cpu(), latents=latents.cpu(), elevation_deg=int(elevation_deg))
