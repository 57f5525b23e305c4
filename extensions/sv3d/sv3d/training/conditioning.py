"""Conditioning of a training clip: pixel-space noise augmentation of the condition view and CFG dropout."""

from __future__ import annotations

from typing import Optional

import torch

CFG_MODES = ("batch", "sample", "independent")


def sample_noise_aug(batch_size: int, mean: float = -3.0, std: float = 0.5, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """(B,) noise-augmentation strength exp(N(mean, std^2)) per clip (SVD-MV: mean -3, std 0.5)."""
    return torch.exp(mean + std * torch.randn(batch_size, generator=generator))


def noise_augment(image: torch.Tensor, strength: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """image (B, 3, H, W) in [-1, 1] + strength (B,) * noise: the augmentation is in *pixel* space, before the VAE
    encoder (as SVD's `cond_frames` input), and the same strength is given to the UNet as an added id."""
    return image + strength.view(-1, 1, 1, 1).to(image.dtype) * noise.to(image.dtype)


def cfg_keep_mask(batch_size: int, rate: float, mode: str, coin: torch.Tensor) -> torch.Tensor:
    """(B,) 1 = keep the image conditioning, 0 = drop it (unconditional training for classifier-free guidance).

    `coin` holds uniform draws: one value for the whole batch (mode "batch", the SVD-MV reference: one coin zeroes
    the whole batch's conditioning) or one per clip (mode "sample"). Mode "independent" (Hi3D, sgm's per-embedder
    ucg_rate) draws one mask per input from its own coins: call it once for the CLIP embedding and once for the
    condition latents.
    """
    if mode == "batch":
        return (coin.reshape(-1)[:1] >= rate).float().expand(batch_size).clone()
    if mode in ("sample", "independent"):
        if coin.numel() != batch_size:
            raise ValueError(f"per-sample CFG dropout needs {batch_size} coins, got {coin.numel()}")
        return (coin.reshape(-1) >= rate).float()
    raise ValueError(f"cfg dropout mode {mode!r} is not one of {', '.join(CFG_MODES)}")


def apply_cfg_dropout(concat: torch.Tensor, context: torch.Tensor, keep: torch.Tensor, keep_context: Optional[torch.Tensor] = None):
    """Zero the condition latents (B, T, C, h, w) and the CLIP embedding (B, 1, D) of the dropped clips (`keep`
    for both, or `keep` for the latents and `keep_context` for the embedding); the added time ids (noise aug,
    cameras) are never dropped, as in the reference and at sampling."""
    keep_context = keep if keep_context is None else keep_context
    k_concat = keep.view(-1, *([1] * (concat.dim() - 1))).to(concat.dtype)
    k_context = keep_context.view(-1, *([1] * (context.dim() - 1))).to(context.dtype)
    return concat * k_concat, context * k_context
