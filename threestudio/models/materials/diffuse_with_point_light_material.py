"""`diffuse-with-point-light-material`: Lambertian albedo lit by ambient light and a point light."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Tuple

import torch
import torch.nn.functional as F

import threestudio
from threestudio.models.materials.base import BaseMaterial
from threestudio.models.networks import get_activation
from threestudio.utils.config import ConfigError

SHADINGS = ("albedo", "textureless", "diffuse")


@threestudio.register("diffuse-with-point-light-material")
class DiffuseWithPointLightMaterial(BaseMaterial):
    """colour = albedo * (ambient + diffuse * max(0, n . l)).

    Training picks one shading per call (whole batch): "albedo" during the first
    `ambient_only_steps` steps or with probability 1 - diffuse_prob, else "textureless" with
    probability textureless_prob, else "diffuse". With soft_shading the ambient/diffuse split is
    random in training. Evaluation renders "diffuse" (or "albedo" while ambient-only). A `shading`
    or `ambient_ratio` argument overrides all of this.
    """

    @dataclass
    class Config(BaseMaterial.Config):
        ambient_light_color: Tuple[float, float, float] = (0.1, 0.1, 0.1)
        diffuse_light_color: Tuple[float, float, float] = (0.9, 0.9, 0.9)
        ambient_only_steps: int = 1000
        diffuse_prob: float = 0.75
        textureless_prob: float = 0.5
        albedo_activation: str = "sigmoid"
        soft_shading: bool = False
        ambient_only_on_test: bool = False

    cfg: Config

    def configure(self) -> None:
        self.requires_normal = True
        try:
            self.albedo_act = get_activation(self.cfg.albedo_activation)
        except ValueError as e:
            raise ConfigError(f"{self.config_path}.albedo_activation: {e}") from None
        self.register_buffer("ambient_light_color", torch.tensor(self.cfg.ambient_light_color, dtype=torch.float32))
        self.register_buffer("diffuse_light_color", torch.tensor(self.cfg.diffuse_light_color, dtype=torch.float32))
        self.ambient_only = False

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        self.ambient_only = global_step < self.cfg.ambient_only_steps

    def _pick_shading(self) -> str:
        if self.training:
            if self.ambient_only or float(torch.rand(())) > self.cfg.diffuse_prob:
                return "albedo"
            if float(torch.rand(())) < self.cfg.textureless_prob:
                return "textureless"
            return "diffuse"
        return "albedo" if (self.ambient_only or self.cfg.ambient_only_on_test) else "diffuse"

    def forward(self, features: torch.Tensor, positions: torch.Tensor, shading_normal: torch.Tensor,
                light_positions: torch.Tensor, ambient_ratio: Optional[float] = None,
                shading: Optional[str] = None, **kwargs: Any) -> torch.Tensor:
        albedo = self.albedo_act(features[..., :3])
        if ambient_ratio is not None:
            ambient = torch.full_like(self.ambient_light_color, float(ambient_ratio))
            diffuse = torch.full_like(self.diffuse_light_color, 1.0 - float(ambient_ratio))
        elif self.training and self.cfg.soft_shading:
            diffuse = torch.full_like(self.diffuse_light_color, float(torch.rand(())))
            ambient = 1.0 - diffuse
        else:
            ambient, diffuse = self.ambient_light_color, self.diffuse_light_color
        light_dirs = F.normalize(light_positions - positions, dim=-1)
        lambert = (shading_normal * light_dirs).sum(dim=-1, keepdim=True).clamp(min=0.0)
        textureless = lambert * diffuse + ambient
        shading = shading or self._pick_shading()
        if shading not in SHADINGS:
            raise ValueError(f"Unknown shading '{shading}'; expected one of {SHADINGS}.")
        # the "* 0" terms keep every parameter in the graph (DDP checks for unused parameters)
        if shading == "albedo":
            return albedo + textureless * 0
        if shading == "textureless":
            return albedo * 0 + textureless
        return albedo.clamp(0.0, 1.0) * textureless

    def export(self, features: torch.Tensor, **kwargs: Any) -> dict[str, Any]:
        return {"albedo": self.albedo_act(features[..., :3]).clamp(0.0, 1.0)}
