"""`neural-radiance-material`: view-dependent colour from features and the encoded view direction."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

import threestudio
from threestudio.models.materials.base import BaseMaterial
from threestudio.models.networks import get_activation, get_encoding, get_mlp
from threestudio.utils.config import ConfigError


@threestudio.register("neural-radiance-material")
class NeuralRadianceMaterial(BaseMaterial):
    @dataclass
    class Config(BaseMaterial.Config):
        input_feature_dims: int = 8
        color_activation: str = "sigmoid"
        dir_encoding_config: dict = field(default_factory=lambda: {"otype": "SphericalHarmonics", "degree": 3})
        mlp_network_config: dict = field(
            default_factory=lambda: {"otype": "FullyFusedMLP", "activation": "ReLU", "n_neurons": 16,
                                     "n_hidden_layers": 2}
        )

    cfg: Config

    def configure(self) -> None:
        try:
            self.encoding = get_encoding(3, self.cfg.dir_encoding_config, f"{self.config_path}.dir_encoding_config")
            self.n_input_dims = self.cfg.input_feature_dims + self.encoding.n_output_dims
            self.network = get_mlp(self.n_input_dims, 3, self.cfg.mlp_network_config,
                                   f"{self.config_path}.mlp_network_config")
            self.color_act = get_activation(self.cfg.color_activation)
        except ConfigError:
            raise
        except (ValueError, TypeError) as e:
            raise ConfigError(f"{self.config_path}: {e}") from None

    def forward(self, features: torch.Tensor, viewdirs: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        if features.shape[-1] != self.cfg.input_feature_dims:
            raise ValueError(
                f"neural-radiance-material expects {self.cfg.input_feature_dims} feature channels "
                f"({self.config_path}.input_feature_dims), got {features.shape[-1]}."
            )
        # unit view directions (-1, 1) -> (0, 1), the encodings' input range
        dirs = (viewdirs.reshape(-1, 3) + 1.0) / 2.0
        x = torch.cat([features.reshape(-1, features.shape[-1]), self.encoding(dirs)], dim=-1)
        color = self.network(x).view(*features.shape[:-1], 3)
        return self.color_act(color)

    def export(self, features: torch.Tensor, **kwargs: Any) -> dict[str, Any]:
        """A view-independent colour for meshes: the mean over the six axis-aligned view directions."""
        axes = torch.cat([torch.eye(3), -torch.eye(3)]).to(features)
        colors = [self(features, axis.expand(*features.shape[:-1], 3)) for axis in axes]
        return {"albedo": torch.stack(colors).mean(dim=0).clamp(0.0, 1.0)}
