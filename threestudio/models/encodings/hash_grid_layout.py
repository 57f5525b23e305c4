"""Parameter layout and pure-PyTorch reference of tiny-cuda-nn's multiresolution grid encoding.

Layout (identical to tcnn's `GridEncoding`, so a tcnn `params` tensor loads unchanged):

- Inputs are positions in [0, 1]^3 (the geometry maps its bounding box there).
- Level l (0-based) has `scale_l = 2^(l * log2(per_level_scale)) * base_resolution - 1` (float32
  arithmetic) and `resolution_l = ceil(scale_l) + 1` vertices per axis.
- Level l owns `size_l = min(next_multiple(resolution_l^3, 8), 2^log2_hashmap_size)` table
  entries (HashGrid); DenseGrid keeps `next_multiple(resolution_l^3, 8)`; TiledGrid caps it at
  `base_resolution^3`. Levels are stored one after the other: `offset_l = sum_{j<l} size_j`.
- The flat parameter vector has `sum_l size_l * n_features_per_level` floats; entry e of level l,
  feature f is at `(offset_l + e) * n_features_per_level + f`.
- A position x maps to `p = scale_l * x + 0.5`; the cell is `floor(p)` (as uint32, so negative
  cells wrap) and the trilinear weights use `p - floor(p)`.
- A corner (gx, gy, gz) indexes entry `(gx + gy*R + gz*R^2) mod size_l` when the level's dense grid
  fits in its table (`R^3 <= size_l`), else `(gx * 1 ^ gy * 2654435761 ^ gz * 805459861) mod size_l`
  (uint32 arithmetic, tcnn's "CoherentPrime" hash).
- Output: (N, n_levels * n_features_per_level), level-major (level 0's features first).
- Initialisation: uniform in [-1e-4, 1e-4].

tcnn fuses the multiply-add of `p`; this code rounds twice. The two can differ only for positions
within one float ulp of a cell boundary.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch

PRIME_Y = 2654435761
PRIME_Z = 805459861
_UINT32 = 0xFFFFFFFF
# tcnn: largest resolution for which the dense 3-D index cannot overflow uint32
_MAX_DENSE_RESOLUTION_3D = 0x659

GRID_TYPES = ("Hash", "Dense", "Tiled")


@dataclass(frozen=True)
class HashGridLayout:
    n_input_dims: int
    n_levels: int
    n_features_per_level: int
    log2_hashmap_size: int
    base_resolution: int
    per_level_scale: float
    grid_type: str = "Hash"

    def __post_init__(self) -> None:
        if self.n_input_dims != 3:
            raise ValueError(
                f"The hash grid supports 3-D inputs only, got n_input_dims={self.n_input_dims}."
            )
        if self.grid_type not in GRID_TYPES:
            raise ValueError(f"Unknown grid type '{self.grid_type}'; expected one of {GRID_TYPES}.")
        if not 1 <= self.n_levels <= 64:
            raise ValueError(f"n_levels must be in [1, 64], got {self.n_levels}.")
        if self.n_features_per_level not in (1, 2, 4, 8):
            raise ValueError(
                f"n_features_per_level must be 1, 2, 4 or 8 (as in tinycudann), got "
                f"{self.n_features_per_level}."
            )
        if not 1 <= self.log2_hashmap_size <= 30:
            raise ValueError(f"log2_hashmap_size must be in [1, 30], got {self.log2_hashmap_size}.")
        for r in self.resolutions:
            if r > _MAX_DENSE_RESOLUTION_3D and self.grid_type != "Hash":
                raise ValueError(
                    f"A {self.grid_type} grid level has resolution {r} > {_MAX_DENSE_RESOLUTION_3D}; "
                    "use a HashGrid or fewer levels."
                )

    @classmethod
    def from_config(cls, n_input_dims: int, config: Mapping[str, Any]) -> "HashGridLayout":
        """Build from a tinycudann-style encoding config (HashGrid, DenseGrid, Grid, ...)."""
        otype = config.get("otype", "HashGrid")
        grid_type = {
            "HashGrid": "Hash",
            "ProgressiveBandHashGrid": "Hash",
            "DenseGrid": "Dense",
            "TiledGrid": "Tiled",
        }.get(otype)
        if otype == "Grid":
            grid_type = config.get("type", "Hash")
        if grid_type is None:
            raise ValueError(f"'{otype}' is not a grid encoding.")
        interpolation = config.get("interpolation", "Linear")
        if interpolation != "Linear":
            raise ValueError(
                f"Grid interpolation '{interpolation}' is not supported; only 'Linear' is implemented."
            )
        return cls(
            n_input_dims=n_input_dims,
            n_levels=int(config.get("n_levels", 16)),
            n_features_per_level=int(config.get("n_features_per_level", 2)),
            log2_hashmap_size=int(config.get("log2_hashmap_size", 19)),
            base_resolution=int(config.get("base_resolution", 16)),
            per_level_scale=float(config.get("per_level_scale", 2.0)),
            grid_type=grid_type,
        )

    @property
    def scales(self) -> list[float]:
        # float32 throughout, like tcnn's exp2f(level * log2f(scale)) * base - 1
        log2_scale = np.float32(math.log2(np.float32(self.per_level_scale)))
        return [
            float(np.float32(np.exp2(np.float32(l) * log2_scale, dtype=np.float32)
                             * np.float32(self.base_resolution)) - np.float32(1.0))
            for l in range(self.n_levels)
        ]

    @property
    def resolutions(self) -> list[int]:
        return [int(math.ceil(s)) + 1 for s in self.scales]

    @property
    def level_sizes(self) -> list[int]:
        sizes = []
        for r in self.resolutions:
            dense = r ** 3
            dense = min(dense, 0xFFFFFFFF // 2)
            size = (dense + 7) // 8 * 8
            if self.grid_type == "Hash":
                size = min(size, 1 << self.log2_hashmap_size)
            elif self.grid_type == "Tiled":
                size = min(size, self.base_resolution ** 3)
            sizes.append(size)
        return sizes

    @property
    def offsets(self) -> list[int]:
        out = [0]
        for s in self.level_sizes:
            out.append(out[-1] + s)
        return out

    @property
    def hashed(self) -> list[bool]:
        if self.grid_type != "Hash":
            return [False] * self.n_levels
        return [
            r > _MAX_DENSE_RESOLUTION_3D or size < r ** 3
            for r, size in zip(self.resolutions, self.level_sizes)
        ]

    @property
    def n_params(self) -> int:
        return self.offsets[-1] * self.n_features_per_level

    @property
    def n_output_dims(self) -> int:
        return self.n_levels * self.n_features_per_level

    def describe(self) -> str:
        rows = [f"level {l}: scale {s:.4f} resolution {r} entries {n} {'hash' if h else 'dense'}"
                for l, (s, r, n, h) in enumerate(
                    zip(self.scales, self.resolutions, self.level_sizes, self.hashed))]
        return "\n".join(rows)


def init_params(layout: HashGridLayout, generator: torch.Generator | None = None) -> torch.Tensor:
    """tcnn's initialisation: uniform in [-1e-4, 1e-4]."""
    params = torch.empty(layout.n_params, dtype=torch.float32)
    params.uniform_(-1e-4, 1e-4, generator=generator)
    return params


def _corner_indices(layout: HashGridLayout, level: int, cell: torch.Tensor) -> torch.Tensor:
    """Table entry (within the level) of integer grid corners `cell` (..., 3) int64."""
    size = layout.level_sizes[level]
    cell = cell & _UINT32  # uint32 semantics: negative cells wrap around
    gx, gy, gz = cell.unbind(-1)
    if layout.hashed[level]:
        # products overflow int64 silently in two's complement; the low 32 bits are exact
        index = (gx ^ ((gy * PRIME_Y) & _UINT32) ^ ((gz * PRIME_Z) & _UINT32)) & _UINT32
    else:
        r = layout.resolutions[level]
        index = (gx + gy * r + ((gz * (r * r)) & _UINT32)) & _UINT32
    return index % size


_CORNER_BITS = torch.tensor([[(k >> d) & 1 for d in range(3)] for k in range(8)], dtype=torch.int64)


def hash_grid_reference(x: torch.Tensor, params: torch.Tensor, layout: HashGridLayout) -> torch.Tensor:
    """Encode positions x (N, 3) in [0, 1] with the flat table `params`; differentiable (any order)."""
    if x.dim() != 2 or x.shape[-1] != 3:
        raise ValueError(f"Expected positions of shape (N, 3), got {tuple(x.shape)}.")
    n_f = layout.n_features_per_level
    table = params.view(-1, n_f)
    bits = _CORNER_BITS.to(x.device)
    outputs = []
    for level, (scale, offset) in enumerate(zip(layout.scales, layout.offsets)):
        pos = x * torch.tensor(scale, dtype=torch.float32, device=x.device) + 0.5
        floor = torch.floor(pos)
        frac = pos - floor  # d frac / d x = scale, as in tcnn
        cell = floor.detach().to(torch.int64)
        corners = cell[:, None, :] + bits  # (N, 8, 3)
        index = _corner_indices(layout, level, corners) + offset
        weights_axis = torch.stack([1.0 - frac, frac], dim=-1)  # (N, 3, 2)
        w = (
            weights_axis[:, 0, bits[:, 0]]
            * weights_axis[:, 1, bits[:, 1]]
            * weights_axis[:, 2, bits[:, 2]]
        )  # (N, 8)
        values = table[index]  # (N, 8, F)
        outputs.append((w[..., None] * values).sum(dim=1))
    return torch.cat(outputs, dim=-1)
