"""EDM v-prediction denoiser, EDM noise levels, Euler sampler and per-frame CFG guiders (as in generative-models).

Written here because diffusers' EulerDiscreteScheduler works on a discrete DDPM schedule with its own noise-level
conventions; SV3D/SVD use the continuous EDM formulation with c_noise = ln(sigma)/4 and a per-frame guidance scale.
These functions are also the building blocks of SDS guidance with SV3D.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch


def edm_v_scalings(sigma: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(c_skip, c_out, c_in, c_noise) of the v-prediction EDM denoiser with sigma_data = 1."""
    c_skip = 1.0 / (sigma**2 + 1.0)
    c_out = -sigma / (sigma**2 + 1.0) ** 0.5
    c_in = 1.0 / (sigma**2 + 1.0) ** 0.5
    c_noise = 0.25 * sigma.log()
    return c_skip, c_out, c_in, c_noise


def edm_denoise(
    unet: torch.nn.Module,
    x: torch.Tensor,
    sigma: torch.Tensor,
    concat: torch.Tensor,
    context: torch.Tensor,
    added_time_ids: torch.Tensor,
) -> torch.Tensor:
    """D(x; sigma): the denoised latents.

    x (B, T, C, h, w) noisy latents; sigma (B,) noise level per video; concat (B, T, C', h, w) conditioning
    latents appended on channels (not scaled by c_in, as in the original); context (B, 1, D); ids (B, T, K).
    """
    c_skip, c_out, c_in, c_noise = edm_v_scalings(sigma.to(torch.float32))
    shape = (-1,) + (1,) * (x.dim() - 1)
    dtype = next(unet.parameters()).dtype
    inp = torch.cat([x * c_in.view(shape).to(x.dtype), concat.to(x.dtype)], dim=2)
    v = unet(inp.to(dtype), c_noise.to(dtype), context.to(dtype), added_time_ids).sample.to(x.dtype)
    return v * c_out.view(shape).to(x.dtype) + x * c_skip.view(shape).to(x.dtype)


def edm_sigmas(num_steps: int, sigma_min: float = 0.002, sigma_max: float = 700.0, rho: float = 7.0) -> torch.Tensor:
    """Karras/EDM noise levels from sigma_max down to sigma_min, followed by a final 0 (num_steps + 1 values)."""
    ramp = torch.linspace(0, 1, num_steps)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def euler_sample(
    denoiser: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    callback: Optional[Callable[[int, torch.Tensor, torch.Tensor], None]] = None,
    pre_step: Optional[Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]] = None,
    start_step: int = 0,
    end_step: Optional[int] = None,
    x_init: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Deterministic Euler integration of the probability-flow ODE (the EulerEDMSampler with s_churn = 0).

    `noise` is unit Gaussian; it is scaled by sqrt(1 + sigma_0^2) as the original does. `denoiser(x, sigma)`
    takes sigma of shape (B,). `pre_step(i, x, sigma_i) -> x` may modify the state before step i (Hi3D's
    anchoring to stage-1 latents); `start_step`/`end_step`/`x_init` run a slice of the loop (resuming).
    """
    x = noise * torch.sqrt(1.0 + sigmas[0] ** 2) if x_init is None else x_init
    ones = x.new_ones(x.shape[0])
    for i in range(int(start_step), len(sigmas) - 1 if end_step is None else int(end_step)):
        sigma, nxt = sigmas[i], sigmas[i + 1]
        if pre_step is not None:
            x = pre_step(i, x, sigma)
        denoised = denoiser(x, ones * sigma)
        d = (x - denoised) / sigma
        x = x + (nxt - sigma) * d
        if callback is not None:
            callback(i, x, denoised)
    return x


def linear_guidance_scales(num_frames: int, min_scale: float = 1.0, max_scale: float = 2.5) -> torch.Tensor:
    """SVD guider: the scale rises linearly from min_scale (frame 0) to max_scale (last frame)."""
    return torch.linspace(min_scale, max_scale, num_frames)


def triangle_guidance_scales(
    num_frames: int, min_scale: float = 1.0, max_scale: float = 2.5, period: float = 1.0
) -> torch.Tensor:
    """SV3D guider: a triangle wave over the orbit, min_scale at the first and last frame (views near the
    input) and max_scale half way round (the back of the object)."""
    t = torch.linspace(0, 1, num_frames) / period
    wave = 2 * (t - torch.floor(t + 0.5)).abs()
    return wave * (max_scale - min_scale) + min_scale


def apply_guidance(uncond: torch.Tensor, cond: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Classifier-free guidance with one scale per frame: uncond/cond (B, T, ...), scales (T,)."""
    s = scales.to(cond.device, cond.dtype).view(1, -1, *([1] * (cond.dim() - 2)))
    return uncond + s * (cond - uncond)
