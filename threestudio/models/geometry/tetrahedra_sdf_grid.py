"""`tetrahedra-sdf-grid` (DMTet): an SDF and per-vertex deformations on a tetrahedral lattice, a mesh by
differentiable marching tetrahedra, and a hash-grid texture field for its colour.

Refinement stage after a coarse NeRF: `create_from(implicit geometry)` takes the coarse surface cleaned like
an export (`coarse_surface`: cavities filled, floaters removed), puts the lattice around it (its box plus a
margin) and initialises the SDF with signed distances to it (sign from the same cleaned inside mask,
`lattice_inside`), so the surface starts within one lattice cell of the NeRF's; with `copy_net` the texture
encoding and feature network are copied.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch
import torch.nn as nn

import threestudio
from threestudio.models.geometry.base import (
    BaseGeometry,
    contract_to_unit_cube,
    default_mlp_network_config,
    default_pos_encoding_config,
)
from threestudio.models.exporters.isosurface import IsosurfaceMesh, extract_isosurface, fill_cavities, remove_floaters
from threestudio.models.geometry.marching_tetrahedra import lattice_vertices, marching_tetrahedra, surface_tetrahedra
from threestudio.models.networks import get_encoding, get_mlp
from threestudio.utils.config import ConfigError

logger = logging.getLogger(__name__)


def drop_small_components(vertices: torch.Tensor, faces: torch.Tensor, min_faces: float
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Remove connected components with fewer faces than `min_faces` (a fraction of all faces if < 1),
    keeping the vertices differentiable (they are indexed, not copied through NumPy)."""
    import scipy.sparse
    import scipy.sparse.csgraph

    f = faces.detach().cpu().numpy()
    n = vertices.shape[0]
    graph = scipy.sparse.coo_matrix((np.ones(2 * len(f)), (np.concatenate([f[:, 0], f[:, 1]]),
                                                          np.concatenate([f[:, 1], f[:, 2]]))), shape=(n, n))
    _, labels = scipy.sparse.csgraph.connected_components(graph, directed=False)
    face_labels = labels[f[:, 0]]
    counts = np.bincount(face_labels)
    threshold = min_faces * len(f) if min_faces < 1 else min_faces
    keep = torch.from_numpy(counts[face_labels] >= threshold).to(faces.device)
    faces = faces[keep]
    used = torch.unique(faces.reshape(-1))
    remap = torch.full((n,), -1, dtype=torch.long, device=faces.device)
    remap[used] = torch.arange(used.numel(), device=faces.device)
    return vertices[used], remap[faces]


def coarse_surface(other: BaseGeometry, resolution: int, free_level: Optional[float] = None
                   ) -> tuple[np.ndarray, np.ndarray, float]:
    """The coarse field's surface cleaned like an export (cavities filled, see `fill_cavities` for
    `free_level`; floaters removed): vertices (V, 3), faces (F, 3) and the resolved level. Marching cubes at
    `resolution` (at least the coarse geometry's own), first over its box, then over the surface's box."""
    n = max(resolution, int(other.cfg.isosurface_resolution))

    def density(p: torch.Tensor) -> torch.Tensor:
        return other.forward_field(p)[0]

    device = other.bbox.device
    vertices, faces, level = extract_isosurface(density, n, other.cfg.isosurface_threshold, other.bbox,
                                                device=device, free_level=free_level)
    vertices, faces = remove_floaters(vertices, faces, 0.05)
    vmin, vmax = vertices.min(0), vertices.max(0)
    pad = (vmax - vmin) * 0.05 + 2 * (other.bbox[1] - other.bbox[0]).max().item() / n
    box = torch.from_numpy(np.stack([vmin - pad, vmax + pad])).float()
    box = torch.stack([box[0].maximum(other.bbox[0].cpu()), box[1].minimum(other.bbox[1].cpu())])
    vertices, faces, level = extract_isosurface(density, n, level, box, device=device, free_level=free_level)
    vertices, faces = remove_floaters(vertices, faces, 0.05)
    return vertices, faces, level


def lattice_inside(field: np.ndarray, n: int, level: float, free_level: Optional[float],
                   min_fraction: float = 0.05) -> np.ndarray:
    """(n^3,) inside flags of the lattice from the coarse field's values there (inside: above `level`), with
    the same cleaning as `coarse_surface`: cavities filled, inside components smaller than `min_fraction` of
    the largest (floaters) removed."""
    from scipy import ndimage

    volume = fill_cavities(field.reshape(n, n, n), level, free_level) > level
    labels, count = ndimage.label(volume)
    if count > 1:
        sizes = np.bincount(labels.reshape(-1))[1:]
        keep = np.concatenate([[False], sizes >= min_fraction * sizes.max()])
        volume = keep[labels]
    return volume.reshape(-1)


@threestudio.register("tetrahedra-sdf-grid")
class TetrahedraSDFGrid(BaseGeometry):
    """Parameters: `sdf` ((R+1)^3,), `deformation` ((R+1)^3, 3) (pre-tanh, in cells), the texture
    `encoding` and `feature_network` (threestudio's names). The lattice is regenerated from R and the
    stored `isosurface_bbox`, so checkpoints hold no tetrahedra."""

    # renderers and exporters take the mesh from isosurface() instead of sampling a density
    is_explicit_mesh = True

    @dataclass
    class Config(BaseGeometry.Config):
        radius: float = 1.0
        # cubes per axis of the lattice (6 tetrahedra each); 64 on CPU, 128-256 on a GPU
        isosurface_resolution: int = 64
        isosurface_deformable_grid: bool = True
        # largest vertex displacement, in lattice cells (tanh-bounded so tetrahedra stay valid)
        deformation_scale: float = 0.5
        isosurface_remove_outliers: bool = False
        isosurface_outlier_n_faces_threshold: float = 0.01
        # conversion: the lattice spans the coarse surface's box grown by this fraction of its size per side
        isosurface_bbox_margin: float = 0.1
        # conversion: a value of the coarse field (a density for implicit-volume) below the isosurface
        # threshold; space counts as seen-empty only where it is reachable from outside through values below
        # it, so unseen pockets behind thin fog (a NeRF's arbitrary interior) are filled instead of becoming
        # inner surfaces. null: only enclosed pockets are filled
        convert_free_level: Optional[float] = None
        # initial shape without a coarse run: "sphere:<radius>" (ignored after create_from)
        shape_init: Optional[str] = "sphere:0.5"
        n_input_dims: int = 3
        n_feature_dims: int = 3
        pos_encoding_config: dict = field(default_factory=default_pos_encoding_config)
        mlp_network_config: dict = field(default_factory=default_mlp_network_config)
        geometry_only: bool = False
        fix_geometry: bool = False

    cfg: Config

    def configure(self) -> None:
        c = self.cfg
        if not 2 <= c.isosurface_resolution <= 512:
            raise ConfigError(f"{self.config_path}.isosurface_resolution must be in [2, 512], got "
                              f"{c.isosurface_resolution}.")
        if c.radius <= 0:
            raise ConfigError(f"{self.config_path}.radius must be positive, got {c.radius}.")
        if not 0 < c.deformation_scale <= 0.5:
            raise ConfigError(f"{self.config_path}.deformation_scale must be in (0, 0.5] cells, got "
                              f"{c.deformation_scale}.")
        r = c.radius
        self.register_buffer("bbox", torch.tensor([[-r, -r, -r], [r, r, r]], dtype=torch.float32))
        self.register_buffer("isosurface_bbox", self.bbox.clone())
        n_vertices = (c.isosurface_resolution + 1) ** 3
        sdf = torch.zeros(n_vertices)
        deformation = torch.zeros(n_vertices, 3)
        if c.fix_geometry:
            self.register_buffer("sdf", sdf)
            self.register_buffer("deformation", deformation)
        else:
            self.sdf = nn.Parameter(sdf)
            self.deformation = nn.Parameter(deformation, requires_grad=c.isosurface_deformable_grid)
        self._grid_cache: Optional[tuple] = None
        if c.shape_init is not None:
            self._init_shape(c.shape_init)
        if not c.geometry_only:
            try:
                self.encoding = get_encoding(c.n_input_dims, c.pos_encoding_config)
                self.feature_network = get_mlp(self.encoding.n_output_dims, c.n_feature_dims, c.mlp_network_config)
            except (ValueError, TypeError) as e:
                raise ConfigError(f"{self.config_path}: {e}") from None

    def _init_shape(self, spec: str) -> None:
        kind, _, value = str(spec).partition(":")
        if kind != "sphere":
            raise ConfigError(f"{self.config_path}.shape_init must be 'sphere:<radius>' or null, got '{spec}'.")
        try:
            radius = float(value or 0.5)
        except ValueError:
            raise ConfigError(f"{self.config_path}.shape_init: '{value}' is not a radius.") from None
        with torch.no_grad():
            self.sdf.copy_(self.grid_vertices().norm(dim=-1) - radius)

    # ------------------------------------------------------------------ lattice
    def grid_vertices(self) -> torch.Tensor:
        """Undeformed lattice vertices ((R+1)^3, 3) in world space (cached per box)."""
        key = (tuple(self.isosurface_bbox.reshape(-1).tolist()), self.isosurface_bbox.device)
        if self._grid_cache is None or self._grid_cache[0] != key:
            self._grid_cache = (key, lattice_vertices(self.cfg.isosurface_resolution, self.isosurface_bbox))
        return self._grid_cache[1]

    def cell_size(self) -> torch.Tensor:
        return (self.isosurface_bbox[1] - self.isosurface_bbox[0]) / self.cfg.isosurface_resolution

    def deformed_vertices(self) -> torch.Tensor:
        grid = self.grid_vertices()
        if not self.cfg.isosurface_deformable_grid:
            return grid
        return grid + torch.tanh(self.deformation) * self.cfg.deformation_scale * self.cell_size()

    def isosurface(self) -> IsosurfaceMesh:
        """The surface sdf = 0 as a mesh whose vertices are differentiable in `sdf` and `deformation`."""
        tets = surface_tetrahedra(self.sdf, self.cfg.isosurface_resolution)
        vertices, faces = marching_tetrahedra(self.deformed_vertices(), self.sdf, tets)
        if faces.shape[0] == 0:
            raise RuntimeError(f"{self.config_path}: the SDF has no zero crossing (empty surface); check "
                               "shape_init or the coarse run it was converted from.")
        if self.cfg.isosurface_remove_outliers:
            vertices, faces = drop_small_components(vertices, faces, self.cfg.isosurface_outlier_n_faces_threshold)
        return IsosurfaceMesh(vertices, faces, {"bbox": self.isosurface_bbox})

    # ------------------------------------------------------------------ texture
    def _features(self, points: torch.Tensor) -> torch.Tensor:
        x = contract_to_unit_cube(points, self.bbox).reshape(-1, self.cfg.n_input_dims)
        return self.feature_network(self.encoding(x)).view(*points.shape[:-1], self.cfg.n_feature_dims)

    def forward(self, points: torch.Tensor, output_normal: bool = False) -> dict[str, torch.Tensor]:
        if self.cfg.geometry_only:
            return {}
        if points.shape[-1] != self.cfg.n_input_dims:
            raise ValueError(f"Expected points of shape (..., {self.cfg.n_input_dims}), got {tuple(points.shape)}.")
        return {"features": self._features(points)}

    def export(self, points: torch.Tensor, **kwargs: Any) -> dict[str, torch.Tensor]:
        return {} if self.cfg.geometry_only else {"features": self._features(points)}

    # ------------------------------------------------------------------ conversion
    @classmethod
    @torch.no_grad()
    def create_from(cls, other: BaseGeometry, cfg: Any = None, copy_net: bool = True,
                    config_path: Optional[str] = None) -> "TetrahedraSDFGrid":
        """A DMTet grid around `other`'s isosurface (an implicit geometry with `isosurface()`,
        `forward_field` and `forward_level`); `copy_net` also copies its texture networks, which needs the
        same `radius`, `n_feature_dims`, `pos_encoding_config` and `mlp_network_config` in `cfg` (written out
        in the config, so that a resumed run builds the same networks)."""
        from omegaconf import OmegaConf
        from scipy.spatial import cKDTree

        where = config_path or "geometry"
        cfg = OmegaConf.to_container(OmegaConf.create(cfg or {}), resolve=True)
        cfg["shape_init"] = None
        instance = cls(cfg, config_path=config_path)
        instance.to(other.bbox.device)
        free_level = instance.cfg.convert_free_level
        level = other.cfg.isosurface_threshold
        if free_level is not None and not isinstance(level, str) and free_level >= float(level):
            raise ConfigError(f"{where}.convert_free_level ({free_level}) must be below the coarse geometry's "
                              f"isosurface_threshold ({level}).")
        coarse_vertices, coarse_faces, threshold = coarse_surface(other, 2 * instance.cfg.isosurface_resolution,
                                                                  free_level)
        vmin, vmax = coarse_vertices.min(0), coarse_vertices.max(0)
        margin = (vmax - vmin) * instance.cfg.isosurface_bbox_margin
        box = torch.from_numpy(np.stack([vmin - margin, vmax + margin])).to(instance.isosurface_bbox)
        r = instance.cfg.radius
        cells = instance.cfg.isosurface_resolution
        # at least two cells of room around the surface, inside the scene box
        box[0] = (box[0] - 2 * (box[1] - box[0]) / cells).clamp(min=-r)
        box[1] = (box[1] + 2 * (box[1] - box[0]) / cells).clamp(max=r)
        instance.isosurface_bbox.copy_(box)
        grid = instance.grid_vertices()
        field = torch.cat([other.forward_field(p)[0].reshape(-1) for p in grid.split(1 << 18)])
        inside = lattice_inside(field.cpu().numpy(), cells + 1, threshold, free_level)
        # signed distance to the cleaned coarse surface (sampled densely), sign from the cleaned inside mask
        import trimesh

        mesh = trimesh.Trimesh(coarse_vertices, coarse_faces, process=False)
        samples = np.concatenate([mesh.vertices, trimesh.sample.sample_surface(mesh, 400_000, seed=0)[0]])
        distance, _ = cKDTree(samples).query(grid.cpu().numpy())
        sign = torch.from_numpy(np.where(inside, -1.0, 1.0)).float()
        instance.sdf.copy_((sign * torch.from_numpy(distance).float()).to(instance.sdf))
        instance.deformation.zero_()
        if copy_net and not instance.cfg.geometry_only:
            if not hasattr(other, "encoding") or not hasattr(other, "feature_network"):
                raise ConfigError(f"geometry_convert_inherit_texture: {type(other).__name__} has no texture "
                                  "networks (encoding, feature_network) to copy.")
            if float(getattr(other.cfg, "radius", instance.cfg.radius)) != instance.cfg.radius:
                raise ConfigError(f"{where}.radius ({instance.cfg.radius}) must equal the coarse geometry's "
                                  f"({other.cfg.radius}) to inherit its texture.")
            try:
                instance.encoding.load_state_dict(other.encoding.state_dict())
                instance.feature_network.load_state_dict(other.feature_network.state_dict())
            except RuntimeError as e:
                raise ConfigError(
                    f"geometry_convert_inherit_texture: {where}.pos_encoding_config, mlp_network_config and "
                    f"n_feature_dims must equal the coarse geometry's ({str(e).splitlines()[0]}).") from None
        logger.info("DMTet grid %d^3 in box %s from a %d-face coarse surface at threshold %.4g",
                    cells, box.tolist(), len(coarse_faces), threshold)
        return instance
