"""The EDM v-prediction training objective of the SVD family (sgm's StandardDiffusionLoss with EDM sigmas).

x = x0 + sigma * noise, D(x; sigma) = c_skip x + c_out F(c_in x, c_noise) (the same `edm_denoise` that sampling
uses), loss = mean((D - x0)^2 * w(sigma)) over every latent element. One sigma per clip, log-normal.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..sampling import edm_denoise

LOSS_WEIGHTINGS = ("edm", "svd_mv_reference")


def sample_sigmas(batch_size: int, p_mean: float = 1.0, p_std: float = 1.6, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """(B,) sigma = exp(N(p_mean, p_std^2)), one per clip (EDM's log-normal training distribution)."""
    return torch.exp(p_mean + p_std * torch.randn(batch_size, generator=generator))


def loss_weight(sigma: torch.Tensor, weighting: str) -> torch.Tensor:
    """Per-clip loss weight.

    - "edm": (sigma^2 + 1) / sigma^2, EDM's 1/c_out^2 with sigma_data = 1 (sgm's EDMWeighting, Hi3D, mindone);
    - "svd_mv_reference": sigma^2 + sigma^-2, what king159/svd-mv's training step computes.
    """
    if weighting == "edm":
        return (sigma**2 + 1.0) / sigma**2
    if weighting == "svd_mv_reference":
        return sigma**2 + sigma ** (-2)
    raise ValueError(f"loss weighting {weighting!r} is not one of {', '.join(LOSS_WEIGHTINGS)}")


def edm_training_loss(
    unet: torch.nn.Module,
    latents: torch.Tensor,
    sigma: torch.Tensor,
    noise: torch.Tensor,
    concat: torch.Tensor,
    context: torch.Tensor,
    added_time_ids: torch.Tensor,
    weighting: str = "edm",
) -> torch.Tensor:
    """Scalar loss for one batch.

    latents (B, T, 4, h, w) scaled target latents x0; sigma (B,); noise like latents (unit Gaussian);
    concat (B, T, C', h, w) conditioning channels; context (B, 1, D); added_time_ids (B, T, K).
    """
    shape = (-1,) + (1,) * (latents.dim() - 1)
    noisy = latents + noise * sigma.view(shape).to(latents.dtype)
    denoised = edm_denoise(unet, noisy, sigma, concat, context, added_time_ids)
    w = loss_weight(sigma.float(), weighting).view(shape)
    return torch.mean((denoised.float() - latents.float()) ** 2 * w)
