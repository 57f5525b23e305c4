"""Background base: colour seen along ray directions that hit nothing."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from threestudio.utils.base import BaseModule


class BaseBackground(BaseModule):
    @dataclass
    class Config(BaseModule.Config):
        pass

    cfg: Config

    def __init__(self, cfg: Any = None, *args: Any, config_path: Optional[str] = None, **kwargs: Any) -> None:
        # kept so that configure() can name keys as the user wrote them (e.g. system.background.color)
        self.config_path = config_path or "background"
        super().__init__(cfg, *args, config_path=config_path, **kwargs)

    def forward(self, dirs: torch.Tensor) -> torch.Tensor:
        """dirs (B, H, W, 3) unit ray directions -> colours (B, H, W, C)."""
        raise NotImplementedError


def random_solid_colors(dirs: torch.Tensor, n_channels: int, shared: bool = False) -> torch.Tensor:
    """dirs (B,...,3) -> (B,...,n_channels): one random colour per view (dim 0), broadcast over the view's pixels;
    `shared`: one colour for the whole batch (MVDream-threestudio's share_aug_bg)."""
    n_colors = 1 if shared else dirs.shape[0]
    colors = torch.rand(n_colors, *([1] * (dirs.dim() - 2)), n_channels, device=dirs.device, dtype=dirs.dtype)
    return colors.expand(*dirs.shape[:-1], n_channels)
