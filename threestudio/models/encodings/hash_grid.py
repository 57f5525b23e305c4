"""Multiresolution hash-grid encoding module with interchangeable backends.

Backends (config key `backend`, chosen at construction):
- `tcnn`: tinycudann's GridEncoding on CUDA (imported lazily, only when asked for or on `auto`
  with CUDA available);
- `cpu_fused`: the C++/OpenMP kernel of `hash_grid_cpu.py` (built on first use; falls back to
  `torch` with a warning if it cannot be built);
- `torch`: the pure-PyTorch reference of `hash_grid_layout.py` (any device);
- `auto` (default): `tcnn` on a CUDA machine where tinycudann imports, else `cpu_fused`.
All backends use tcnn's parameter layout, so `encoding.params` moves between them unchanged. On
a CUDA tensor the non-tcnn backends use the reference.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping, Optional

import torch
import torch.nn as nn

from threestudio.models.encodings import hash_grid_cpu
from threestudio.models.encodings.hash_grid_layout import HashGridLayout, hash_grid_reference, init_params
from threestudio.utils.base import Updateable
from threestudio.utils.misc import cuda_package_available

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "cpu_fused", "tcnn")
# keys of our configs that tinycudann does not know
_EXTRA_KEYS = ("backend", "include_xyz", "start_level", "start_step", "update_steps")


def tcnn_available() -> bool:
    return cuda_package_available("tinycudann", "the fused C++ CPU kernel or the PyTorch hash grid")


def resolve_backend(requested: str) -> str:
    if requested not in BACKENDS:
        raise ValueError(f"Unknown hash-grid backend '{requested}'; expected one of {', '.join(BACKENDS)}.")
    if requested == "auto":
        return "tcnn" if tcnn_available() else "cpu_fused"
    if requested == "tcnn" and not tcnn_available():
        raise RuntimeError(
            "Hash-grid backend 'tcnn' needs CUDA and the tinycudann package; use backend=auto, "
            "cpu_fused or torch on this machine."
        )
    return requested


def tcnn_config(config: Mapping[str, Any]) -> dict:
    """The part of an encoding config that tinycudann understands."""
    out = {k: v for k, v in config.items() if k not in _EXTRA_KEYS}
    if out.get("otype") == "ProgressiveBandHashGrid":
        out["otype"] = "Grid"
        out["type"] = "Hash"
    return out


class GridTable(nn.Module):
    """The parameter table (`params`, tcnn layout) and the CPU/reference evaluation of the grid."""

    def __init__(self, layout: HashGridLayout, backend: str) -> None:
        super().__init__()
        self.layout = layout
        self.backend = backend
        self.params = nn.Parameter(init_params(layout))
        self._meta = hash_grid_cpu.GridMeta(layout)
        self.n_output_dims = layout.n_output_dims

    def active_backend(self, x: torch.Tensor) -> str:
        """The implementation that `forward(x)` will use."""
        if self.backend == "cpu_fused" and x.device.type == "cpu" and hash_grid_cpu.load_kernel() is not None:
            return "cpu_fused"
        return "torch"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.active_backend(x) == "cpu_fused":
            lib = hash_grid_cpu.load_kernel()
            return hash_grid_cpu.hash_grid_fused_cpu(x, self.params, lib, self._meta)
        return hash_grid_reference(x.to(torch.float32), self.params, self.layout)

    def position_vjp(self, x: torch.Tensor, grad_enc: torch.Tensor) -> Optional[torch.Tensor]:
        """The fused kernel's sum_j grad_enc[:, j] d enc_j / dx (differentiable); None on other backends."""
        if self.active_backend(x) != "cpu_fused":
            return None
        return hash_grid_cpu.hash_grid_position_vjp(x, grad_enc, self.params, hash_grid_cpu.load_kernel(), self._meta)


class HashGridEncoding(nn.Module, Updateable):
    """tcnn-style grid encoding: inputs (N, 3) in [0, 1], outputs (N, n_levels * F).

    Config: tinycudann's (otype HashGrid | DenseGrid | TiledGrid | Grid | ProgressiveBandHashGrid,
    n_levels, n_features_per_level, log2_hashmap_size, base_resolution, per_level_scale,
    interpolation "Linear") plus `backend` and, for ProgressiveBandHashGrid, `start_level`,
    `start_step`, `update_steps` (levels beyond the current one output zeros).
    The table is `self.encoding.params` (the key threestudio checkpoints use).
    """

    def __init__(self, n_input_dims: int, config: Mapping[str, Any]) -> None:
        super().__init__()
        config = dict(config)
        self.layout = HashGridLayout.from_config(n_input_dims, config)
        self.n_input_dims = n_input_dims
        self.n_output_dims = self.layout.n_output_dims
        self.backend = resolve_backend(str(config.get("backend", "auto")))
        if self.backend == "tcnn":
            import tinycudann as tcnn

            self.encoding = tcnn.Encoding(n_input_dims, tcnn_config(config), dtype=torch.float32)
        else:
            self.encoding = GridTable(self.layout, self.backend)

        self.progressive = config.get("otype") == "ProgressiveBandHashGrid"
        self.n_levels = self.layout.n_levels
        self.n_features_per_level = self.layout.n_features_per_level
        if self.progressive:
            for key in ("start_level", "start_step", "update_steps"):
                if key not in config:
                    raise ValueError(f"ProgressiveBandHashGrid needs '{key}' in its config.")
            self.start_level = int(config["start_level"])
            self.start_step = int(config["start_step"])
            self.update_steps = int(config["update_steps"])
            if self.update_steps <= 0:
                raise ValueError(f"update_steps must be positive, got {self.update_steps}.")
            self.current_level = min(self.start_level, self.n_levels)
            self.register_buffer("mask", self._level_mask(self.current_level), persistent=False)

    def _level_mask(self, n_active: int) -> torch.Tensor:
        mask = torch.zeros(self.n_output_dims, dtype=torch.float32)
        mask[: n_active * self.n_features_per_level] = 1.0
        return mask

    @property
    def active_backend(self) -> str:
        if self.backend == "tcnn":
            return "tcnn"
        return self.encoding.active_backend(torch.empty(0, device=self.encoding.params.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        enc = self.encoding(x)
        if self.backend == "tcnn":
            enc = enc.float()
        if self.progressive:
            enc = enc * self.mask.to(enc.device)
        return enc

    def position_vjp(self, x: torch.Tensor, grad_enc: torch.Tensor) -> torch.Tensor:
        """sum_j grad_enc[:, j] * d enc_j / d x, shape (N, 3), differentiable in grad_enc, x and the table.

        The position part of a backward pass without the table gradient: analytic normals need
        exactly this (and its derivatives), and skipping the tens-of-MB table gradient that a
        plain `autograd.grad` through the encoding would also compute halves their cost.
        """
        if self.progressive:
            grad_enc = grad_enc * self.mask.to(grad_enc.device)
        if self.backend != "tcnn":
            fused = self.encoding.position_vjp(x, grad_enc)
            if fused is not None:
                return fused
        with torch.enable_grad():
            x_leaf = x if x.requires_grad else x.detach().requires_grad_(True)
            enc = self.encoding(x_leaf).float()
            return torch.autograd.grad(enc, x_leaf, grad_enc, create_graph=True)[0]

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        if not self.progressive:
            return
        level = self.start_level + max(global_step - self.start_step, 0) // self.update_steps
        level = min(level, self.n_levels)
        if level != self.current_level:
            logger.debug("Hash grid: %d active levels from step %d", level, global_step)
            self.current_level = level
            self.mask = self._level_mask(level).to(self.mask.device)


def load_tcnn_params(encoding: HashGridEncoding, params: torch.Tensor) -> None:
    """Copy a tinycudann `params` vector (same config) into any backend's table."""
    expected = encoding.layout.n_params
    if params.numel() != expected:
        raise ValueError(
            f"The parameter vector has {params.numel()} values but this grid's layout needs {expected}; "
            "the configs differ."
        )
    with torch.no_grad():
        encoding.encoding.params.copy_(params.reshape(-1).to(encoding.encoding.params))

