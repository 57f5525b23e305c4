"""`mesh-exporter`: density field -> textured mesh (model.obj + model.mtl + texture_kd.png, model.glb)."""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

import threestudio
from threestudio.models.exporters.isosurface import (
    ExportError,
    decimate,
    extract_isosurface,
    remove_floaters,
)
from threestudio.models.exporters.mesh_io import UP_AXES, write_glb, write_textured_obj, write_vertex_color_ply
from threestudio.models.exporters.mesh_cleanup import repair_manifold, vertex_normals
from threestudio.models.exporters.texture_baking import fill_empty_texels, rasterize_uv, uv_unwrap
from threestudio.utils.base import BaseObject
from threestudio.utils.config import ConfigError

logger = logging.getLogger(__name__)


@torch.no_grad()
def query_albedo(geometry: Any, material: Any, points: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Surface colour (N,3) in [0,1] at world points: geometry.export -> material.export["albedo"]."""
    device = getattr(geometry, "device", torch.device("cpu"))
    out = np.zeros((len(points), 3), dtype=np.float32)
    for start in range(0, len(points), chunk):
        p = torch.as_tensor(points[start:start + chunk], dtype=torch.float32, device=device)
        features = geometry.export(p)
        exported = material.export(**features) if features else {}
        if "albedo" not in exported:
            raise ExportError(f"The material ({type(material).__name__}) exports no 'albedo' for the geometry's "
                              f"features {sorted(features)}: cannot bake a texture.")
        out[start:start + len(p)] = exported["albedo"][..., :3].float().clamp(0, 1).cpu().numpy()
    return out


@threestudio.register("mesh-exporter")
class MeshExporter(BaseObject):
    @dataclass
    class Config(BaseObject.Config):
        isosurface_resolution: int = 256
        # a density level, "auto" (Otsu split of the log-density histogram) or null (the geometry's own
        # isosurface_threshold, else 25)
        isosurface_threshold: Any = None
        # world box half-size; null: the geometry's radius
        radius: Optional[float] = None
        chunk: int = 262144
        # fill empty pockets enclosed by the object (they would give inner surfaces)
        fill_cavities: bool = True
        # with fill_cavities: pockets that reach the outside only through passages narrower than 2 n + 1 voxels
        # count as enclosed too (0: only fully enclosed pockets); see isosurface.fill_cavities
        cavity_passage: int = 0
        # drop connected components with less than this fraction of the largest component's area
        remove_floaters: bool = True
        floater_min_fraction: float = 0.05
        # quadric decimation to about this many faces (needs fast-simplification); null keeps all faces
        decimate_target_faces: Optional[int] = 20000
        # fast-simplification's `agg` (0-10): 7 suits marching-cubes meshes, 3 smooth refined meshes (measured
        # in isosurface.decimate)
        decimate_aggressiveness: float = 7.0
        texture_size: int = 1024
        texture_padding: int = 2
        rasterizer: str = "auto"  # auto (nvdiffrast on CUDA when importable) | cpu | nvdiffrast
        save_name: str = "model"
        save_obj: bool = True
        save_glb: bool = True
        # up axis of model.obj and model.glb alike: "y" (glTF's and most viewers' convention; the object stands
        # as in the videos) or "z" (the world's own coordinates)
        up_axis: str = "y"
        # smooth (area-weighted) vertex normals in the OBJ and GLB, so viewers shade without facets
        save_normals: bool = True
        # mark the GLB material KHR_materials_unlit: the baked texture already holds the shading
        unlit: bool = False
        # make the mesh watertight and 2-manifold (MeshFix: removes non-manifold edges, fills pinholes)
        repair_manifold: bool = True
        save_vertex_color_ply: bool = False

    cfg: Config

    def configure(self, geometry: Any, material: Any, background: Any = None) -> None:
        if self.cfg.rasterizer not in ("auto", "cpu", "nvdiffrast"):
            raise ConfigError(f"system.exporter.rasterizer must be auto, cpu or nvdiffrast, got '{self.cfg.rasterizer}'.")
        c = self.cfg
        if c.up_axis not in UP_AXES:
            raise ConfigError(f"system.exporter.up_axis must be one of {', '.join(UP_AXES)}, got '{c.up_axis}'.")
        if c.isosurface_resolution < 8:
            raise ConfigError("system.exporter.isosurface_resolution must be at least 8.")
        for key in ("texture_size", "chunk"):
            if getattr(c, key) <= 0:
                raise ConfigError(f"system.exporter.{key} must be positive, got {getattr(c, key)}.")
        if c.cavity_passage < 0:
            raise ConfigError(f"system.exporter.cavity_passage must be >= 0, got {c.cavity_passage}.")
        if c.texture_padding < 0:
            raise ConfigError(f"system.exporter.texture_padding must be >= 0, got {c.texture_padding}.")
        if c.decimate_target_faces is not None and c.decimate_target_faces <= 0:
            raise ConfigError("system.exporter.decimate_target_faces must be positive or null (no decimation), "
                              f"got {c.decimate_target_faces}.")
        if not 0 <= c.decimate_aggressiveness <= 10:
            raise ConfigError("system.exporter.decimate_aggressiveness must be in [0, 10], got "
                              f"{c.decimate_aggressiveness}.")
        if not 0 <= c.floater_min_fraction < 1:
            raise ConfigError(f"system.exporter.floater_min_fraction must be in [0, 1), got {c.floater_min_fraction}.")
        if c.radius is not None and c.radius <= 0:
            raise ConfigError(f"system.exporter.radius must be positive or null, got {c.radius}.")
        threshold = c.isosurface_threshold
        if not (threshold is None or threshold == "auto"
                or (isinstance(threshold, (int, float)) and not isinstance(threshold, bool))):
            raise ConfigError(f"system.exporter.isosurface_threshold must be a number, 'auto' or null, got {threshold!r}.")
        if not c.save_name or os.sep in c.save_name:
            raise ConfigError(f"system.exporter.save_name must be a plain file name, got '{c.save_name}'.")
        if not (c.save_obj or c.save_glb or c.save_vertex_color_ply):
            raise ConfigError("system.exporter: save_obj, save_glb and save_vertex_color_ply are all false; "
                              "nothing would be exported.")
        self.geometry = geometry
        self.material = material
        self.background = background

    # --------------------------------------------------------------------------- pieces
    def radius(self) -> float:
        if self.cfg.radius is not None:
            return float(self.cfg.radius)
        return float(getattr(getattr(self.geometry, "cfg", None), "radius", 1.0))

    def threshold_setting(self) -> Any:
        if self.cfg.isosurface_threshold is not None:
            return self.cfg.isosurface_threshold
        return getattr(getattr(self.geometry, "cfg", None), "isosurface_threshold", 25.0)

    def extract_mesh(self) -> tuple[np.ndarray, np.ndarray]:
        """Vertices (V,3) and outward-facing faces (F,3) of the cleaned, decimated isosurface. A geometry that
        is a mesh (`is_explicit_mesh`, e.g. tetrahedra-sdf-grid) gives its own; no marching cubes then."""
        if getattr(self.geometry, "is_explicit_mesh", False):
            mesh = self.geometry.isosurface()
            vertices = mesh.vertices.detach().cpu().numpy().astype(np.float32)
            faces = mesh.faces.detach().cpu().numpy().astype(np.int64)
            logger.info("mesh of the geometry: %d vertices, %d faces", len(vertices), len(faces))
        else:
            vertices, faces, _ = extract_isosurface(
                self.geometry.forward_density, self.cfg.isosurface_resolution, self.threshold_setting(),
                self.radius(), self.cfg.chunk, getattr(self.geometry, "device", None), cavities=self.cfg.fill_cavities,
                passage=self.cfg.cavity_passage)
        if self.cfg.remove_floaters:
            vertices, faces = remove_floaters(vertices, faces, self.cfg.floater_min_fraction)
        if self.cfg.decimate_target_faces:
            vertices, faces = decimate(vertices, faces, self.cfg.decimate_target_faces, self.cfg.decimate_aggressiveness)
            if self.cfg.remove_floaters:  # decimation can leave a few detached slivers
                vertices, faces = remove_floaters(vertices, faces, self.cfg.floater_min_fraction)
        if self.cfg.repair_manifold:
            vertices, faces = repair_manifold(vertices, faces)
        return vertices, faces

    def bake_texture(self, uv: np.ndarray, vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
        """(S,S,3) albedo texture: colour of the surface point under each texel, seams filled."""
        size = self.cfg.texture_size
        face_index, bary = rasterize_uv(uv, faces, size, self.cfg.rasterizer, getattr(self.geometry, "device", None))
        covered = face_index >= 0
        fi = face_index[covered]
        points = np.einsum("nk,nkc->nc", bary[covered], vertices[faces[fi]])
        texture = np.zeros((size, size, 3), dtype=np.float32)
        texture[covered] = query_albedo(self.geometry, self.material, points, self.cfg.chunk // 4)
        return fill_empty_texels(texture, covered)

    # ------------------------------------------------------------------------------ run
    def __call__(self, out_dir: str) -> list[str]:
        """Write the mesh files into `out_dir`; returns their paths."""
        start = time.perf_counter()
        os.makedirs(out_dir, exist_ok=True)
        vertices, faces = self.extract_mesh()
        uv_mesh = uv_unwrap(vertices, faces, self.cfg.texture_size, self.cfg.texture_padding)
        texture = self.bake_texture(uv_mesh.uv, uv_mesh.vertices, uv_mesh.faces)
        normals = None
        if self.cfg.save_normals:  # from the unsplit mesh, so copies along UV seams share one normal
            normals = vertex_normals(vertices, faces)[uv_mesh.source_index]
        name = self.cfg.save_name
        written: list[str] = []
        if self.cfg.save_obj:
            written += write_textured_obj(out_dir, uv_mesh.vertices, uv_mesh.faces, uv_mesh.uv, texture, name,
                                          normals=normals, up_axis=self.cfg.up_axis)
        if self.cfg.save_glb:
            written.append(write_glb(os.path.join(out_dir, f"{name}.glb"), uv_mesh.vertices, uv_mesh.faces,
                                     uv_mesh.uv, texture, normals=normals, up_axis=self.cfg.up_axis,
                                     unlit=self.cfg.unlit))
        if self.cfg.save_vertex_color_ply:
            colors = query_albedo(self.geometry, self.material, vertices, self.cfg.chunk // 4)
            written.append(write_vertex_color_ply(os.path.join(out_dir, f"{name}_vertex_color.ply"),
                                                  vertices, faces, colors))
        logger.info("exported %d faces to %s in %.1f s", len(faces), out_dir, time.perf_counter() - start)
        return written

