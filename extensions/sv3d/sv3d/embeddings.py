"""Sinusoidal embeddings of the scalar conditioning ids (noise level, cond_aug, camera angles, fps ...)."""

from __future__ import annotations

from typing import Sequence

import torch
from diffusers.models.embeddings import get_timestep_embedding


def timestep_embedding(values: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoid of each value in a 1-D tensor, **cos first** then sin, as the generative-models UNet and
    conditioner embed noise levels and scalar ids: frequencies exp(-ln(max_period) * i / (dim // 2)).

    diffusers' `get_timestep_embedding` with `flip_sin_to_cos=True, downscale_freq_shift=0` is exactly this.
    Returns (N, dim) float32.
    """
    return get_timestep_embedding(
        values.reshape(-1), dim, flip_sin_to_cos=True, downscale_freq_shift=0, max_period=int(max_period)
    )


def embed_added_ids(ids: torch.Tensor, widths: Sequence[int]) -> torch.Tensor:
    """Embed per-frame scalar ids (..., K) into (..., sum(widths)): id k gets a sinusoid of width widths[k],
    concatenated in config order (e.g. sv3d_p: cond_aug 256 | polar 512 | azimuth 512)."""
    if ids.shape[-1] != len(widths):
        raise ValueError(
            f"expected {len(widths)} added time ids per frame (one per vector embedder), got {ids.shape[-1]}"
        )
    lead = ids.shape[:-1]
    parts = [timestep_embedding(ids[..., k].reshape(-1), int(w)).reshape(*lead, int(w)) for k, w in enumerate(widths)]
    return torch.cat(parts, dim=-1)
