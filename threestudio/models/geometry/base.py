"""Geometry bases: a field in the box [-radius, radius]^3 that renderers and exporters query.

Contract (docs/architecture.md): `forward(points (..., 3), output_normal=False)` returns
`{"density" (..., 1), "features" (..., C)[, "normal", "shading_normal" (..., 3)]}` for world-space
points; `forward_density(points) -> (..., 1)`; `density_grid(resolution)` samples the field on a
dense grid; `isosurface()` extracts a mesh (through the one extraction path,
`threestudio.models.exporters.isosurface`); `export(points)` returns the features at surface points.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from threestudio.models.exporters.isosurface import (
    IsosurfaceMesh,
    extract_isosurface,
    remove_floaters,
    sample_density_grid,
)
from threestudio.utils.base import BaseModule
from threestudio.utils.config import ConfigError


def default_pos_encoding_config() -> dict:
    """threestudio's default hash grid of the geometries (16 levels x 2 features, 2^19 entries, base 16)."""
    return {"otype": "HashGrid", "n_levels": 16, "n_features_per_level": 2, "log2_hashmap_size": 19,
            "base_resolution": 16, "per_level_scale": 1.447269237440378}


def default_mlp_network_config() -> dict:
    """threestudio's default geometry MLP (one hidden layer of 64 ReLU units)."""
    return {"otype": "VanillaMLP", "activation": "ReLU", "output_activation": "none", "n_neurons": 64,
            "n_hidden_layers": 1}


def contract_to_unit_cube(x: torch.Tensor, bbox: torch.Tensor) -> torch.Tensor:
    """World points in bbox (2, 3) -> [0, 1]^3 (the hash grid's input range)."""
    return (x - bbox[0]) / (bbox[1] - bbox[0])


class BaseGeometry(BaseModule):
    @dataclass
    class Config(BaseModule.Config):
        pass

    cfg: Config

    def __init__(self, cfg: Any = None, *args: Any, config_path: Optional[str] = None, **kwargs: Any) -> None:
        # kept so that configure() can name keys as the user wrote them (e.g. system.geometry.radius)
        self.config_path = config_path or "geometry"
        super().__init__(cfg, *args, config_path=config_path, **kwargs)

    def export(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return {}


class BaseImplicitGeometry(BaseGeometry):
    @dataclass
    class Config(BaseGeometry.Config):
        radius: float = 1.0
        isosurface: bool = True
        isosurface_method: str = "mc"
        isosurface_resolution: int = 128
        # a density level, or "auto" (Otsu split of the log-density histogram, as the mesh exporter)
        isosurface_threshold: Any = 0.0
        isosurface_chunk: int = 0
        isosurface_coarse_to_fine: bool = False
        # fill empty pockets enclosed by the object before marching cubes (the exporter's fill_cavities)
        isosurface_fill_cavities: bool = False
        isosurface_remove_outliers: bool = False
        # components with less than this fraction of the largest component's area are outliers
        isosurface_outlier_n_faces_threshold: float = 0.01

    cfg: Config

    def configure(self) -> None:
        if self.cfg.radius <= 0:
            raise ConfigError(f"{self.config_path}.radius must be positive, got {self.cfg.radius}.")
        if self.cfg.isosurface_method not in ("mc", "mc-cpu"):
            raise ConfigError(
                f"{self.config_path}.isosurface_method '{self.cfg.isosurface_method}' is not supported; use 'mc'."
            )
        threshold = self.cfg.isosurface_threshold
        if not (threshold == "auto" or (isinstance(threshold, (int, float)) and not isinstance(threshold, bool))):
            raise ConfigError(f"{self.config_path}.isosurface_threshold must be a number or 'auto', got {threshold!r}.")
        r = self.cfg.radius
        self.register_buffer("bbox", torch.tensor([[-r, -r, -r], [r, r, r]], dtype=torch.float32))

    def forward(self, points: torch.Tensor, output_normal: bool = False) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward_density(self, points: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_field(self, points: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The implicit field whose level set is the surface (here: density), and no deformation."""
        return self.forward_density(points), None

    def forward_level(self, field: torch.Tensor, threshold: float) -> torch.Tensor:
        """Positive outside, negative inside (for a density field: threshold - density)."""
        return -(field - threshold)

    @torch.no_grad()
    def density_grid(self, resolution: Optional[int] = None, chunk: Optional[int] = None,
                     bbox: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(R, R, R) field at the vertices of a grid spanning bbox (default: the geometry's box).

        Index order (x, y, z): `grid[i, j, k]` is at `bbox[0] + (i, j, k) / (R - 1) * (bbox[1] - bbox[0])`.
        """
        resolution = resolution or self.cfg.isosurface_resolution
        chunk = self.cfg.isosurface_chunk if chunk is None else chunk
        bbox = self.bbox if bbox is None else bbox
        grid = sample_density_grid(lambda p: self.forward_field(p)[0], resolution, bbox, chunk, self.bbox.device)
        return torch.from_numpy(grid)

    @torch.no_grad()
    def _isosurface(self, bbox: torch.Tensor) -> IsosurfaceMesh:
        vertices, faces, level = extract_isosurface(
            lambda p: self.forward_field(p)[0], self.cfg.isosurface_resolution, self.cfg.isosurface_threshold,
            bbox, self.cfg.isosurface_chunk, self.bbox.device, cavities=self.cfg.isosurface_fill_cavities)
        if self.cfg.isosurface_remove_outliers:
            vertices, faces = remove_floaters(vertices, faces, self.cfg.isosurface_outlier_n_faces_threshold)
        return IsosurfaceMesh(torch.from_numpy(vertices), torch.from_numpy(faces),
                              {"threshold": level, "bbox": torch.as_tensor(bbox).detach().cpu().float()})

    @torch.no_grad()
    def isosurface(self) -> IsosurfaceMesh:
        """Marching-cubes mesh of the field at `isosurface_threshold`, in world coordinates (CPU tensors).

        Raises ExportError (a ValueError) naming the field's range when the level set is empty."""
        if not self.cfg.isosurface:
            raise RuntimeError(f"Isosurface extraction is disabled: set {self.config_path}.isosurface=true.")
        mesh = self._isosurface(self.bbox)
        if self.cfg.isosurface_coarse_to_fine:
            vmin, vmax = mesh.vertices.amin(dim=0), mesh.vertices.amax(dim=0)
            margin = (vmax - vmin) * 0.1
            bbox = torch.stack([(vmin - margin).maximum(self.bbox[0].cpu()),
                                (vmax + margin).minimum(self.bbox[1].cpu())])
            mesh = self._isosurface(bbox)
        return mesh
