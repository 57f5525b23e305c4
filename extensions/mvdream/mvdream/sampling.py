"""DDIM sampling with classifier-free guidance over batches of objects x views."""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import torch
from diffusers import DDIMScheduler
from diffusers.utils.torch_utils import randn_tensor

from .unet import MultiViewUNet2DConditionModel


def make_scheduler(schedule: Optional[Dict[str, Any]] = None) -> DDIMScheduler:
    """MVDream's DDIM: scaled-linear betas 0.00085..0.012 over 1000 steps, eps, steps_offset 1, no clipping."""
    schedule = dict(schedule or {})
    return DDIMScheduler(
        num_train_timesteps=int(schedule.get("num_train_timesteps", 1000)),
        beta_start=float(schedule.get("beta_start", 0.00085)),
        beta_end=float(schedule.get("beta_end", 0.012)),
        beta_schedule="scaled_linear",
        prediction_type=schedule.get("prediction_type", "epsilon"),
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        timestep_spacing="leading",
    )


@torch.no_grad()
def ddim_sample(
    unet: MultiViewUNet2DConditionModel,
    scheduler: DDIMScheduler,
    cond: torch.Tensor,
    uncond: Optional[torch.Tensor],
    camera: Optional[torch.Tensor],
    num_views: int,
    latent_shape: tuple,
    num_inference_steps: int = 50,
    guidance_scale: float = 7.5,
    eta: float = 0.0,
    generator: Optional[torch.Generator] = None,
    latents: Optional[torch.Tensor] = None,
    callback: Optional[Callable[[int, int, torch.Tensor], None]] = None,
) -> torch.Tensor:
    """Denoise (B*N, C, h, w) latents from noise; rows grouped object by object, N = num_views.

    cond / uncond: text states per row (B*N, 77, D); camera: (B*N, camera_dim) or None. CFG runs the unconditional
    and conditional halves in one UNet call (each half stays grouped by object, as the multiview attention needs).
    Noise is drawn on the CPU from `generator`, so a seed gives the same result on any device.
    """
    device, dtype = unet.device, unet.dtype
    if latents is None:
        latents = randn_tensor(latent_shape, generator=generator, device=torch.device("cpu"), dtype=torch.float32)
    latents = latents.to(device=device, dtype=torch.float32) * scheduler.init_noise_sigma
    use_cfg = uncond is not None and guidance_scale != 1.0
    context = torch.cat([uncond, cond]) if use_cfg else cond
    context = context.to(device=device, dtype=dtype)
    cam = None
    if camera is not None:
        cam = (torch.cat([camera, camera]) if use_cfg else camera).to(device=device, dtype=dtype)
    scheduler.set_timesteps(num_inference_steps, device=device)
    steps = scheduler.timesteps
    for i, t in enumerate(steps):
        model_in = torch.cat([latents, latents]) if use_cfg else latents
        model_in = scheduler.scale_model_input(model_in, t).to(dtype)
        eps = unet(model_in, t, encoder_hidden_states=context, camera=cam, num_views=num_views).sample.float()
        if use_cfg:
            eps_uncond, eps_cond = eps.chunk(2)
            eps = eps_uncond + guidance_scale * (eps_cond - eps_uncond)
        latents = scheduler.step(eps, t, latents, eta=eta, generator=generator).prev_sample
        if callback is not None:
            callback(i, int(t), latents)
    return latents
