"""`neural-environment-map-background`: colour = MLP(direction encoding), with random-colour augmentation."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Tuple

import torch

import threestudio
from threestudio.models.backgrounds.base import BaseBackground, random_solid_colors
from threestudio.models.networks import get_activation, get_encoding, get_mlp
from threestudio.utils.config import ConfigError


@threestudio.register("neural-environment-map-background")
class NeuralEnvironmentMapBackground(BaseBackground):
    @dataclass
    class Config(BaseBackground.Config):
        n_output_dims: int = 3
        color_activation: str = "sigmoid"
        dir_encoding_config: dict = field(default_factory=lambda: {"otype": "SphericalHarmonics", "degree": 3})
        mlp_network_config: dict = field(
            default_factory=lambda: {"otype": "VanillaMLP", "activation": "ReLU", "n_neurons": 16,
                                     "n_hidden_layers": 2}
        )
        random_aug: bool = False
        random_aug_prob: float = 0.5
        # one random colour for all views of the batch (MVDream-threestudio): the 4 views of an object must
        # agree for the multiview prior
        share_aug_bg: bool = False
        # a fixed colour at evaluation time (e.g. white for clean test renders)
        eval_color: Optional[Tuple[float, ...]] = None

    cfg: Config

    def configure(self) -> None:
        if self.cfg.eval_color is not None and len(self.cfg.eval_color) != self.cfg.n_output_dims:
            raise ConfigError(
                f"{self.config_path}.eval_color has {len(self.cfg.eval_color)} values, n_output_dims is {self.cfg.n_output_dims}."
            )
        try:
            self.encoding = get_encoding(3, self.cfg.dir_encoding_config, f"{self.config_path}.dir_encoding_config")
            self.network = get_mlp(self.encoding.n_output_dims, self.cfg.n_output_dims, self.cfg.mlp_network_config,
                                   f"{self.config_path}.mlp_network_config")
            self.color_act = get_activation(self.cfg.color_activation)
        except ConfigError:
            raise
        except (ValueError, TypeError) as e:
            raise ConfigError(f"{self.config_path}: {e}") from None

    def forward(self, dirs: torch.Tensor) -> torch.Tensor:
        if not self.training and self.cfg.eval_color is not None:
            color = torch.tensor(self.cfg.eval_color, dtype=dirs.dtype, device=dirs.device)
            return color.expand(*dirs.shape[:-1], self.cfg.n_output_dims)
        # unit directions (-1, 1) -> (0, 1), the encodings' input range
        x = (dirs.reshape(-1, 3) + 1.0) / 2.0
        color = self.color_act(self.network(self.encoding(x))).view(*dirs.shape[:-1], self.cfg.n_output_dims)
        if self.training and self.cfg.random_aug and float(torch.rand(())) < self.cfg.random_aug_prob:
            color = color * 0 + random_solid_colors(dirs, self.cfg.n_output_dims, self.cfg.share_aug_bg)
        return color
