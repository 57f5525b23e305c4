"""Mixing weights of the two scores and the schedules of the multiview share (Diffusion² §"score composition").

The denoised estimate of latent (view v, frame t) is  D = w_mv(v) D_sv3d + w_vid(v) D_svd  with
    w_vid(v) = (0.25 + 0.75 cos² φ_v) (1 - s_i),   w_mv(v) = 1 - w_vid(v),
φ_v the view's azimuth relative to the input view and s_i the multiview scale at step i. The reference code
hard-codes the 21 values of 0.5 (1 + cos(2π (v + 1) / 10.5)) = cos² φ_v of the default orbit; here they come from
the actual azimuths, so any orbit works.
"""

from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch

SCHEDULES = ("constant", "linear", "cosine", "logistic")


def video_view_weights(azimuths_deg: Sequence[float]) -> torch.Tensor:
    """(V,) float64: 0.25 + 0.75 cos² φ_v, the video model's share of view v before the scale schedule.

    1 at the input view and behind it (the video model knows those views best), 0.25 at the sides."""
    phi = torch.deg2rad(torch.as_tensor([float(a) for a in azimuths_deg], dtype=torch.float64))
    return 0.25 + 0.75 * torch.cos(phi) ** 2


def multiview_scale(
    step: int,
    num_steps: int,
    schedule: str = "constant",
    scale: float = 0.6,
    scale_min: float = 0.0,
    scale_max: float = 1.0,
    k: float = 15.0,
) -> float:
    """s_i of step `step` in [0, num_steps): the multiview model's extra share (reference defaults).

    constant: `scale`; linear: scale_max -> scale_min; cosine: half cosine scale_max -> scale_min;
    logistic: scale_min + (scale_max - scale_min) (1 - sigmoid(k (x - scale))) with x = step / (num_steps - 1),
    i.e. `scale` is the midpoint of the drop."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown scale schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if schedule == "constant":
        return float(scale)
    x = step / max(num_steps - 1, 1)
    if schedule == "linear":
        return scale_max + x * (scale_min - scale_max)
    if schedule == "cosine":
        return scale_min + (math.cos(x * math.pi) + 1.0) / 2.0 * (scale_max - scale_min)
    return scale_min + (1.0 - 1.0 / (1.0 + math.exp(-k * (x - scale)))) * (scale_max - scale_min)


def mixing_weights(view_weights: torch.Tensor, scale: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """(w_mv, w_vid), each (V,): w_vid = view_weights (1 - scale), w_mv = 1 - w_vid (sum to one per view)."""
    w_vid = view_weights * (1.0 - float(scale))
    return 1.0 - w_vid, w_vid
