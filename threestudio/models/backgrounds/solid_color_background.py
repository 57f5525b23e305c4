"""`solid-color-background`: one colour (fixed or learned), optionally randomised in training."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import torch
import torch.nn as nn

import threestudio
from threestudio.models.backgrounds.base import BaseBackground, random_solid_colors
from threestudio.utils.config import ConfigError


@threestudio.register("solid-color-background")
class SolidColorBackground(BaseBackground):
    @dataclass
    class Config(BaseBackground.Config):
        n_output_dims: int = 3
        color: Tuple[float, ...] = (1.0, 1.0, 1.0)
        learned: bool = False
        random_aug: bool = False
        random_aug_prob: float = 0.5

    cfg: Config

    def configure(self) -> None:
        if len(self.cfg.color) != self.cfg.n_output_dims:
            raise ConfigError(
                f"{self.config_path}.color has {len(self.cfg.color)} values but n_output_dims is {self.cfg.n_output_dims}."
            )
        color = torch.tensor(self.cfg.color, dtype=torch.float32)
        if self.cfg.learned:
            self.env_color = nn.Parameter(color)
        else:
            self.register_buffer("env_color", color)

    def forward(self, dirs: torch.Tensor) -> torch.Tensor:
        color = self.env_color.to(dirs).expand(*dirs.shape[:-1], self.cfg.n_output_dims)
        if self.training and self.cfg.random_aug and float(torch.rand(())) < self.cfg.random_aug_prob:
            # "* 0" keeps the learned colour in the graph (DDP checks for unused parameters)
            color = color * 0 + random_solid_colors(dirs, self.cfg.n_output_dims)
        return color
