"""Stage-2 anchoring of the refiner's sampling to the stage-1 latents (Hi3D's pipeline_i2v_eval_v02.py).

Before Euler step i of N: x <- (1 - a_i) x + a_i (z + sigma_i eps0), a_i = (0.5 (1 + cos(i / N)))^p, p = 40,
with i / N in *radians* (no pi: a_i falls from 1 to 6.8e-5 at i = N - 1 = 24, never to 0), z the stage-1
frames' first-stage latents (scaled) and eps0 the sampler's initial unit noise.
"""

from __future__ import annotations

import math
from typing import Callable

import torch


def anchor_weights(num_steps: int, power: float = 40.0) -> torch.Tensor:
    """(num_steps,) a_i = (0.5 * (1 + cos(i / num_steps)))**power in float64."""
    i = torch.arange(int(num_steps), dtype=torch.float64)
    return (0.5 * (1.0 + torch.cos(i / int(num_steps)))) ** float(power)


def anchored_pre_step(anchor: torch.Tensor, eps0: torch.Tensor, num_steps: int, power: float = 40.0
                      ) -> Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]:
    """`pre_step` hook for `sv3d.sampling.euler_sample`: blends x towards anchor + sigma_i * eps0."""

    def pre_step(i: int, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        a = math.pow(0.5 * (1.0 + math.cos(i * 1.0 / num_steps)), power)
        return x * (1.0 - a) + (eps0 * sigma + anchor) * a

    return pre_step
