"""Sinusoidal embeddings of the scalar conditioning ids (noise level, cond_aug, camera angles, fps ...)."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

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


SINUSOID = "sinusoid"
VALUE_AND_SINUSOID = "value+sinusoid"  # spelled "value+sinusoid@<scale>", e.g. Hi3D's aesthetic slot "@100"


def parse_slot_kind(kind: str) -> Tuple[str, float]:
    """'sinusoid' -> ('sinusoid', 1.0); 'value+sinusoid@100' -> ('value+sinusoid', 100.0)."""
    name, _, scale = str(kind).partition("@")
    if name not in (SINUSOID, VALUE_AND_SINUSOID):
        raise ValueError(f"unknown added-id slot kind {kind!r}: use 'sinusoid' or 'value+sinusoid@<scale>'")
    try:
        return name, float(scale) if scale else 1.0
    except ValueError:
        raise ValueError(f"bad scale in added-id slot kind {kind!r}") from None


def embed_slot(values: torch.Tensor, width: int, kind: str = SINUSOID) -> torch.Tensor:
    """(N,) scalars -> (N, width) for one vector-conditioning slot.

    'sinusoid': the cos-first sinusoid of the value (sgm's ConcatTimestepEmbedderND).
    'value+sinusoid@s': the raw value followed by a (width-1)-wide sinusoid of value*s (Hi3D's aesthetic
    embedder: [score, sinusoid(100*score, 255)]; an odd sinusoid width ends with one zero)."""
    name, scale = parse_slot_kind(kind)
    values = values.reshape(-1).float()
    if name == SINUSOID:
        return timestep_embedding(values, int(width))
    return torch.cat([values[:, None], timestep_embedding(values * scale, int(width) - 1)], dim=1)


def embed_added_ids(ids: torch.Tensor, widths: Sequence[int], kinds: Optional[Sequence[str]] = None) -> torch.Tensor:
    """Embed per-frame scalar ids (..., K) into (..., sum(widths)): id k gets a slot of width widths[k]
    (a sinusoid unless `kinds[k]` says otherwise), concatenated in config order (e.g. sv3d_p: cond_aug 256 |
    polar 512 | azimuth 512)."""
    if ids.shape[-1] != len(widths):
        raise ValueError(
            f"expected {len(widths)} added time ids per frame (one per vector embedder), got {ids.shape[-1]}"
        )
    kinds = [SINUSOID] * len(widths) if kinds is None else list(kinds)
    if len(kinds) != len(widths):
        raise ValueError(f"{len(kinds)} slot kinds for {len(widths)} added ids")
    lead = ids.shape[:-1]
    parts = [embed_slot(ids[..., k], int(w), kinds[k]).reshape(*lead, int(w)) for k, w in enumerate(widths)]
    return torch.cat(parts, dim=-1)
