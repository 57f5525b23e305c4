"""Material base: turns geometry features (and normals, light, view) into colours at sample points."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

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

    def __init__(self, cfg: Any = None, *args: Any, config_path: Optional[str] = None, **kwargs: Any) -> None:
        # kept so that configure() can name keys as the user wrote them (e.g. system.material.color_activation)
        self.config_path = config_path or "material"
        super().__init__(cfg, *args, config_path=config_path, **kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Colour (N, C) of N samples. Renderers pass, by keyword: `features` (N, F) and the other geometry
        outputs (`density` (N, 1), `normal`/`shading_normal` (N, 3) when asked), `viewdirs` (N, 3),
        `positions` (N, 3), `light_positions` (N, 3) (one per sample, from its ray), and the material
        options of the render call (e.g. `shading`, `ambient_ratio`); never camera-batch keys."""
        raise NotImplementedError

    def export(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Per-point attributes for mesh export, e.g. {"albedo": (..., 3) in [0, 1]}."""
        return {}
