"""Small analytic encodings: spherical harmonics, frequency (tcnn layout), progressive-band frequency, identity."""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch
import torch.nn as nn

from threestudio.utils.base import Updateable


def spherical_harmonics(dirs: torch.Tensor, degree: int) -> torch.Tensor:
    """Real spherical harmonics (tcnn's sign convention and order) of unit vectors (..., 3).

    Returns (..., degree**2). Written from the closed-form real SH basis; degrees 1 to 4.
    """
    if not 1 <= degree <= 4:
        raise ValueError(f"Spherical harmonics are implemented for degree 1 to 4, got {degree}.")
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, 0.28209479177387814)]
    if degree > 1:
        out += [-0.48860251190291987 * y, 0.48860251190291987 * z, -0.48860251190291987 * x]
    if degree > 2:
        x2, y2, z2 = x * x, y * y, z * z
        out += [
            1.0925484305920792 * x * y,
            -1.0925484305920792 * y * z,
            0.94617469575755997 * z2 - 0.31539156525251999,
            -1.0925484305920792 * x * z,
            0.54627421529603959 * (x2 - y2),
        ]
    if degree > 3:
        out += [
            0.59004358992664352 * y * (-3.0 * x2 + y2),
            2.8906114426405538 * x * y * z,
            0.45704579946446572 * y * (1.0 - 5.0 * z2),
            0.3731763325901154 * z * (5.0 * z2 - 3.0),
            0.45704579946446572 * x * (1.0 - 5.0 * z2),
            1.4453057213202769 * z * (x2 - y2),
            0.59004358992664352 * x * (-x2 + 3.0 * y2),
        ]
    return torch.stack(out, dim=-1)


class SphericalHarmonicsEncoding(nn.Module):
    """tcnn "SphericalHarmonics": inputs are directions mapped to [0, 1]^3 ((d + 1) / 2)."""

    def __init__(self, n_input_dims: int, config: Mapping[str, Any]) -> None:
        super().__init__()
        if n_input_dims != 3:
            raise ValueError(f"SphericalHarmonics encodes 3-D directions, got n_input_dims={n_input_dims}.")
        self.degree = int(config.get("degree", 4))
        if not 1 <= self.degree <= 4:
            raise ValueError(f"SphericalHarmonics degree must be 1 to 4, got {self.degree}.")
        self.n_input_dims = 3
        self.n_output_dims = self.degree ** 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return spherical_harmonics(x * 2.0 - 1.0, self.degree)


class FrequencyEncoding(nn.Module):
    """tcnn "Frequency": output j is sin(2^k * pi * x_d + (j % 2) * pi / 2), d = j // (2n), k = (j // 2) % n."""

    def __init__(self, n_input_dims: int, config: Mapping[str, Any]) -> None:
        super().__init__()
        self.n_frequencies = int(config.get("n_frequencies", 12))
        self.n_input_dims = n_input_dims
        self.n_output_dims = n_input_dims * self.n_frequencies * 2
        freqs = (2.0 ** torch.arange(self.n_frequencies, dtype=torch.float32)) * math.pi
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scaled = x[..., :, None] * self.freqs  # (..., D, n)
        out = torch.stack([torch.sin(scaled), torch.cos(scaled)], dim=-1)  # (..., D, n, 2)
        return out.flatten(-3)


class ProgressiveBandFrequency(nn.Module, Updateable):
    """threestudio's frequency encoding: [sin(2^k x), cos(2^k x)] per band, bands faded in over steps."""

    def __init__(self, n_input_dims: int, config: Mapping[str, Any]) -> None:
        super().__init__()
        self.n_frequencies = int(config["n_frequencies"])
        self.n_input_dims = n_input_dims
        self.n_output_dims = n_input_dims * 2 * self.n_frequencies
        self.n_masking_step = int(config.get("n_masking_step", 0))
        bands = 2.0 ** torch.linspace(0, self.n_frequencies - 1, self.n_frequencies)
        self.register_buffer("bands", bands, persistent=False)
        self.register_buffer("mask", torch.ones(self.n_frequencies), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scaled = x[..., None, :] * self.bands[:, None]  # (..., n, D)
        out = torch.stack([torch.sin(scaled), torch.cos(scaled)], dim=-2)  # (..., n, 2, D)
        out = out * self.mask[:, None, None]
        return out.flatten(-3)

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        if self.n_masking_step <= 0:
            return
        progress = global_step / self.n_masking_step * self.n_frequencies
        t = (progress - torch.arange(self.n_frequencies, device=self.mask.device)).clamp(0, 1)
        self.mask = (1.0 - torch.cos(math.pi * t)) / 2.0


class IdentityEncoding(nn.Module):
    """tcnn "Identity": x * scale + offset."""

    def __init__(self, n_input_dims: int, config: Mapping[str, Any]) -> None:
        super().__init__()
        self.scale = float(config.get("scale", 1.0))
        self.offset = float(config.get("offset", 0.0))
        self.n_input_dims = self.n_output_dims = n_input_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.offset
