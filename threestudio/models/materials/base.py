"""Material base: turns geometry features (and normals, light, view) into colours at sample points."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from threestudio.utils.base import BaseModule


class BaseMaterial(BaseModule):
    @dataclass
    class Config(BaseModule.Config):
        pass

    cfg: Config
    # renderers ask the geometry for normals only when the material needs them
    requires_normal: bool = False
    requires_tangent: bool = False

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        raise NotImplementedError

    def export(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Per-point attributes for mesh export, e.g. {"albedo": (..., 3) in [0, 1]}."""
        return {}
