"""`implicit-volume`: a density + feature field from a hash-grid encoding and two small MLPs."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.nn.functional as F

import threestudio
from threestudio.models.geometry.base import (
    BaseImplicitGeometry,
    contract_to_unit_cube,
    default_mlp_network_config,
    default_pos_encoding_config,
)
from threestudio.models.networks import get_activation, get_encoding, get_mlp
from threestudio.utils.config import ConfigError

NORMAL_TYPES = (None, "analytic", "finite_difference", "finite_difference_laplacian", "pred")
DENSITY_BIASES = ("blob_magic3d", "blob_dreamfusion")


@threestudio.register("implicit-volume")
class ImplicitVolume(BaseImplicitGeometry):
    """Density = activation(MLP(enc(x)) + bias(x)); features = MLP(enc(x)) (activated by the material).

    Parameter names match threestudio's (`encoding.encoding.encoding.params`,
    `density_network.layers.{0,2}.weight`, `feature_network.layers.{0,2}.weight`).
    """

    @dataclass
    class Config(BaseImplicitGeometry.Config):
        n_input_dims: int = 3
        n_feature_dims: int = 3
        density_activation: Optional[str] = "softplus"
        # "blob_magic3d" | "blob_dreamfusion" | a number (pre-activation bias)
        density_bias: Any = "blob_magic3d"
        density_blob_scale: float = 10.0
        density_blob_std: float = 0.5
        pos_encoding_config: dict = field(default_factory=default_pos_encoding_config)
        mlp_network_config: dict = field(default_factory=default_mlp_network_config)
        normal_type: Optional[str] = "finite_difference"
        finite_difference_normal_eps: float = 0.01
        isosurface_threshold: Any = 25.0

    cfg: Config

    def configure(self) -> None:
        super().configure()
        if self.cfg.n_input_dims != 3:
            raise ConfigError(f"{self.config_path}.n_input_dims must be 3, got {self.cfg.n_input_dims}.")
        if self.cfg.normal_type not in NORMAL_TYPES:
            raise ConfigError(
                f"{self.config_path}.normal_type '{self.cfg.normal_type}' is unknown; choose from {NORMAL_TYPES}."
            )
        bias = self.cfg.density_bias
        if not (bias in DENSITY_BIASES or (isinstance(bias, (int, float)) and not isinstance(bias, bool))):
            raise ConfigError(
                f"{self.config_path}.density_bias must be 'blob_magic3d', 'blob_dreamfusion' or a number, got {bias!r}."
            )
        try:
            self.density_act = get_activation(self.cfg.density_activation)
        except ValueError as e:
            raise ConfigError(f"{self.config_path}.density_activation: {e}") from None
        try:
            mlp_key = f"{self.config_path}.mlp_network_config"
            self.encoding = get_encoding(self.cfg.n_input_dims, self.cfg.pos_encoding_config,
                                         f"{self.config_path}.pos_encoding_config")
            self.density_network = get_mlp(self.encoding.n_output_dims, 1, self.cfg.mlp_network_config, mlp_key)
            if self.cfg.n_feature_dims > 0:
                self.feature_network = get_mlp(
                    self.encoding.n_output_dims, self.cfg.n_feature_dims, self.cfg.mlp_network_config, mlp_key
                )
            if self.cfg.normal_type == "pred":
                self.normal_network = get_mlp(self.encoding.n_output_dims, 3, self.cfg.mlp_network_config, mlp_key)
        except ConfigError:
            raise
        except (ValueError, TypeError) as e:
            raise ConfigError(f"{self.config_path}: {e}") from None

    # ------------------------------------------------------------------ field
    def density_bias(self, points: torch.Tensor) -> torch.Tensor | float:
        bias = self.cfg.density_bias
        if bias == "blob_dreamfusion":
            r2 = (points ** 2).sum(dim=-1, keepdim=True)
            return self.cfg.density_blob_scale * torch.exp(-0.5 * r2 / self.cfg.density_blob_std ** 2)
        if bias == "blob_magic3d":
            r = torch.sqrt((points ** 2).sum(dim=-1, keepdim=True))
            return self.cfg.density_blob_scale * (1.0 - r / self.cfg.density_blob_std)
        return float(bias)

    def _encode(self, points: torch.Tensor) -> torch.Tensor:
        x = contract_to_unit_cube(points, self.bbox).reshape(-1, self.cfg.n_input_dims)
        return self.encoding(x)

    def _density_from_encoding(self, points: torch.Tensor, enc: torch.Tensor) -> torch.Tensor:
        raw = self.density_network(enc).view(*points.shape[:-1], 1)
        return self.density_act(raw + self.density_bias(points))

    def forward(self, points: torch.Tensor, output_normal: bool = False) -> dict[str, torch.Tensor]:
        if points.shape[-1] != self.cfg.n_input_dims:
            raise ValueError(f"Expected points of shape (..., {self.cfg.n_input_dims}), got {tuple(points.shape)}.")
        if output_normal and self.cfg.normal_type is None:
            raise ValueError(
                f"Normals were requested but {self.config_path}.normal_type is null; set it (e.g. 'analytic')."
            )
        if output_normal and self.cfg.normal_type == "analytic":
            return self._forward_analytic(points)
        enc = self._encode(points)
        out = {"density": self._density_from_encoding(points, enc)}
        if self.cfg.n_feature_dims > 0:
            out["features"] = self.feature_network(enc).view(*points.shape[:-1], self.cfg.n_feature_dims)
        if output_normal:
            out["normal"] = out["shading_normal"] = self._normal(points, out["density"], enc)
        return out

    def _forward_analytic(self, points: torch.Tensor) -> dict[str, torch.Tensor]:
        """Density, features and normal = -normalize(d density / d points), differentiable to second order.

        d density / d points is assembled from its parts instead of one autograd.grad through the whole
        field: (activation' * MLP vector-Jacobian) pushed through the encoding's position derivative,
        plus the density bias' gradient. The encoding part then never computes a table gradient (the
        training backward computes that once), which is most of the cost of analytic normals.
        """
        grad_enabled = torch.is_grad_enabled()
        with torch.enable_grad():
            # the grid's position derivative is computed explicitly below, so the grid input needs no
            # graph to the points unless the caller differentiates with respect to them
            keep_point_graph = points.requires_grad
            pts = points if keep_point_graph else points.detach().requires_grad_(True)
            x = contract_to_unit_cube(pts if keep_point_graph else pts.detach(), self.bbox)
            x = x.reshape(-1, self.cfg.n_input_dims)
            enc = self.encoding(x)
            raw_mlp = self.density_network(enc).view(*points.shape[:-1], 1)
            bias = self.density_bias(pts)
            raw = raw_mlp + bias
            density = self.density_act(raw)
            grad_raw = torch.autograd.grad(density, raw, torch.ones_like(density), create_graph=grad_enabled)[0]
            grad_enc = torch.autograd.grad(raw_mlp, enc, grad_raw, create_graph=grad_enabled)[0]
            grad_x = self.encoding.position_vjp(x, grad_enc).view(*points.shape[:-1], 3)
            grad_points = grad_x / (self.bbox[1] - self.bbox[0])
            if isinstance(bias, torch.Tensor):
                grad_points = grad_points + torch.autograd.grad(bias, pts, grad_raw, create_graph=grad_enabled)[0]
            normal = F.normalize(-grad_points, dim=-1)
            out = {"density": density, "normal": normal, "shading_normal": normal}
            if self.cfg.n_feature_dims > 0:
                out["features"] = self.feature_network(enc).view(*points.shape[:-1], self.cfg.n_feature_dims)
        if not grad_enabled:
            out = {k: v.detach() for k, v in out.items()}
        return out

    def _normal(self, points: torch.Tensor, density: torch.Tensor, enc: torch.Tensor) -> torch.Tensor:
        kind = self.cfg.normal_type
        if kind == "pred":
            normal = self.normal_network(enc).view(*points.shape[:-1], 3)
        else:
            eps = self.cfg.finite_difference_normal_eps
            r = self.cfg.radius
            if kind == "finite_difference_laplacian":
                offsets = torch.tensor([[eps, 0, 0], [-eps, 0, 0], [0, eps, 0], [0, -eps, 0], [0, 0, eps],
                                        [0, 0, -eps]], dtype=points.dtype, device=points.device)
                d = self.forward_density((points[..., None, :] + offsets).clamp(-r, r))[..., 0]
                normal = -0.5 * (d[..., 0::2] - d[..., 1::2]) / eps
            else:
                offsets = torch.eye(3, dtype=points.dtype, device=points.device) * eps
                d = self.forward_density((points[..., None, :] + offsets).clamp(-r, r))[..., 0]
                normal = -(d - density) / eps
        return F.normalize(normal, dim=-1)

    def forward_density(self, points: torch.Tensor) -> torch.Tensor:
        return self._density_from_encoding(points, self._encode(points))

    def export(self, points: torch.Tensor, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Raw features at surface points (the material turns them into colours)."""
        if self.cfg.n_feature_dims == 0:
            return {}
        features = self.feature_network(self._encode(points)).view(*points.shape[:-1], self.cfg.n_feature_dims)
        return {"features": features}
