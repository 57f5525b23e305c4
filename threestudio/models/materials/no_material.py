"""`no-material`: the features are the colour (after an activation, optionally through an MLP)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional

import torch

import threestudio
from threestudio.models.materials.base import BaseMaterial
from threestudio.models.networks import get_activation, get_mlp
from threestudio.utils.config import ConfigError

logger = logging.getLogger(__name__)


@threestudio.register("no-material")
class NoMaterial(BaseMaterial):
    @dataclass
    class Config(BaseMaterial.Config):
        n_output_dims: int = 3
        color_activation: str = "sigmoid"
        input_feature_dims: Optional[int] = None
        mlp_network_config: Optional[dict] = None
        requires_normal: bool = False

    cfg: Config

    def configure(self) -> None:
        try:
            self.color_act = get_activation(self.cfg.color_activation)
        except ValueError as e:
            raise ConfigError(f"{self.config_path}.color_activation: {e}") from None
        self.use_network = self.cfg.input_feature_dims is not None and self.cfg.mlp_network_config is not None
        if self.use_network:
            self.network = get_mlp(self.cfg.input_feature_dims, self.cfg.n_output_dims, self.cfg.mlp_network_config,
                                   f"{self.config_path}.mlp_network_config")
        self.requires_normal = self.cfg.requires_normal

    def forward(self, features: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        if self.use_network:
            color = self.network(features.reshape(-1, features.shape[-1]))
            color = color.view(*features.shape[:-1], self.cfg.n_output_dims)
        else:
            if features.shape[-1] != self.cfg.n_output_dims:
                raise ValueError(
                    f"no-material without an MLP needs {self.cfg.n_output_dims} feature channels, got "
                    f"{features.shape[-1]}; set geometry.n_feature_dims or material.input_feature_dims + mlp_network_config."
                )
            color = features
        return self.color_act(color)

    def export(self, features: torch.Tensor, **kwargs: Any) -> dict[str, Any]:
        color = self(features, **kwargs).clamp(0, 1)
        if color.shape[-1] < 3:
            raise ValueError(f"Exporting colours needs at least 3 channels, the material gives {color.shape[-1]}.")
        if color.shape[-1] > 3:
            logger.warning("The material outputs %d channels; exporting the first 3 as RGB.", color.shape[-1])
        return {"albedo": color[..., :3]}
