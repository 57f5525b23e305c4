"""`nvdiff-rasterizer`: renders the geometry's mesh (`isosurface()`) with the differentiable rasterizer.

Same code on every backend (nvdiffrast on CUDA, the C++ CPU kernel, the PyTorch reference): see
threestudio.models.rasterization. Outputs (B, H, W, C) like the NeRF renderer: `comp_rgb`, `comp_rgb_fg`,
`comp_rgb_bg`, `opacity` (antialiased coverage), `depth` (distance to the camera), `comp_normal` (world
space, [-1, 1], zero off the mesh), plus `mesh` for regularisers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

import threestudio
from threestudio.models.rasterization import BACKENDS, DifferentiableRasterizer
from threestudio.models.renderers.base import Rasterizer
from threestudio.utils.batch import RASTER_INPUTS, per_ray, render_options
from threestudio.utils.config import ConfigError


def vertex_normals(vertices: Tensor, faces: Tensor) -> Tensor:
    """(V, 3) area-weighted unit vertex normals of a mesh wound counter-clockwise from outside."""
    v = vertices[faces]
    face_n = torch.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0], dim=-1)
    normals = torch.zeros_like(vertices).index_add(0, faces.reshape(-1), face_n.repeat_interleave(3, dim=0))
    return F.normalize(normals, dim=-1)


def camera_ray_directions(mvp: Tensor, height: int, width: int) -> Tensor:
    """(B, H, W, 3) unit world directions through the pixel centres (row 0 at the top) of (B, 4, 4) `mvp`
    (NDC y up), by unprojecting the near and far planes."""
    ys = 1.0 - (2.0 * torch.arange(height, device=mvp.device, dtype=torch.float32) + 1.0) / height
    xs = (2.0 * torch.arange(width, device=mvp.device, dtype=torch.float32) + 1.0) / width - 1.0
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    inv = torch.linalg.inv(mvp.float())
    ends = []
    for z in (-1.0, 1.0):
        ndc = torch.stack([xx, yy, torch.full_like(xx, z), torch.ones_like(xx)], dim=-1).reshape(-1, 4)
        world = ndc @ inv.transpose(1, 2)  # (B, HW, 4)
        ends.append(world[..., :3] / world[..., 3:])
    return F.normalize(ends[1] - ends[0], dim=-1).view(mvp.shape[0], height, width, 3)


@threestudio.register("nvdiff-rasterizer")
class NVDiffRasterizer(Rasterizer):
    inputs = RASTER_INPUTS

    @dataclass
    class Config(Rasterizer.Config):
        # auto: nvdiffrast on CUDA when importable, else the CPU kernel (else the PyTorch reference)
        context_type: str = "auto"
        # nvdiffrast's antialias option: scales the silhouette gradients to the vertex positions
        pos_gradient_boost: float = 1.0
        # render at supersample x the asked resolution and average down (SSAA): one texture sample per pixel
        # aliases the texture field's fine detail and the outline, which multi-sample ground truth does not have
        supersample: int = 1
        # in training, shift each view's sample grid by a random sub-pixel offset every step (stochastic
        # supersampling): the texture field is then fitted everywhere between the pixel centres, not only at
        # the same few points per pixel, which is what a novel view samples
        train_jitter: bool = False

    cfg: Config

    def configure(self, geometry: Any, material: Any, background: Any) -> None:
        super().configure(geometry, material, background)
        backend = {"cuda": "nvdiffrast", "gl": "nvdiffrast"}.get(self.cfg.context_type, self.cfg.context_type)
        if backend not in BACKENDS:
            raise ConfigError(f"{self.config_path}.context_type must be one of {BACKENDS}, got "
                              f"'{self.cfg.context_type}'.")
        if not 1 <= self.cfg.supersample <= 8:
            raise ConfigError(f"{self.config_path}.supersample must be an integer in [1, 8], got "
                              f"{self.cfg.supersample}.")
        self._backend_setting = backend
        self._rasterizers: dict = {}

    def rasterizer(self, device: torch.device) -> DifferentiableRasterizer:
        # chosen per device: a module built on the CPU and moved to CUDA gets nvdiffrast there
        key = str(device)
        if key not in self._rasterizers:
            try:
                self._rasterizers[key] = DifferentiableRasterizer(self._backend_setting, device)
            except ValueError as e:
                raise ConfigError(f"{self.config_path}.context_type: {e}") from None
        return self._rasterizers[key]

    def forward(self, mvp_mtx: Tensor, camera_positions: Tensor, light_positions: Tensor, height: int,
                width: int, rays_d: Optional[Tensor] = None, bg_color: Optional[Tensor] = None,
                render_rgb: bool = True, **kwargs: Any) -> dict[str, Any]:
        if mvp_mtx.dim() != 3 or mvp_mtx.shape[1:] != (4, 4):
            raise ValueError(f"mvp_mtx must have shape (B, 4, 4), got {tuple(mvp_mtx.shape)}.")
        height, width = int(height), int(width)
        s = self.cfg.supersample
        if self.training and self.cfg.train_jitter:
            # a translation of NDC by up to half a rendered pixel; the rays follow the jittered camera
            shift = torch.eye(4, dtype=mvp_mtx.dtype, device=mvp_mtx.device).repeat(mvp_mtx.shape[0], 1, 1)
            pixel = torch.tensor([2.0 / (width * s), 2.0 / (height * s)], dtype=mvp_mtx.dtype,
                                 device=mvp_mtx.device)
            shift[:, :2, 3] = (torch.rand(mvp_mtx.shape[0], 2, device=mvp_mtx.device) - 0.5) * pixel
            mvp_mtx, rays_d = shift @ mvp_mtx, None
        if s == 1:
            return self._render(mvp_mtx, camera_positions, light_positions, height, width, rays_d, bg_color,
                                render_rgb, **kwargs)
        batch = mvp_mtx.shape[0]

        def fine(value: Optional[Tensor], name: str) -> Optional[Tensor]:
            # per-ray inputs (B, H, W, C) repeat over their pixel's sub-samples; per-view ones pass through
            if value is None or not torch.is_tensor(value) or value.dim() != 4:
                return value
            per_ray(value, batch, height, width, name)  # shape check
            return value.repeat_interleave(s, dim=1).repeat_interleave(s, dim=2)

        out = self._render(mvp_mtx, camera_positions, fine(light_positions, "light_positions"), height * s,
                           width * s, None, fine(bg_color, "bg_color"), render_rgb, **kwargs)
        for key, value in out.items():
            if torch.is_tensor(value) and value.dim() == 4 and key != "rast":
                value = F.avg_pool2d(value.permute(0, 3, 1, 2), s).permute(0, 2, 3, 1)
                out[key] = F.normalize(value, dim=-1) if key == "comp_normal" else value
        return out

    def _render(self, mvp_mtx: Tensor, camera_positions: Tensor, light_positions: Tensor, height: int,
                width: int, rays_d: Optional[Tensor], bg_color: Optional[Tensor], render_rgb: bool,
                **kwargs: Any) -> dict[str, Any]:
        batch = mvp_mtx.shape[0]
        r = self.rasterizer(mvp_mtx.device)
        mesh = self.geometry.isosurface()
        vertices, faces = mesh.vertices, mesh.faces.to(torch.int32)
        homo = torch.cat([vertices, torch.ones_like(vertices[:, :1])], dim=-1)
        clip = torch.einsum("vc,bdc->bvd", homo, mvp_mtx.to(homo.dtype))
        # image row 0 is the top (NDC y = +1); the rasterizer's row 0 is y = -1
        clip = clip * torch.tensor([1.0, -1.0, 1.0, 1.0], device=clip.device, dtype=clip.dtype)
        topology = r.construct_topology(faces)
        rast = r.rasterize(clip, faces, (height, width))
        covered = rast[..., 3:] > 0
        opacity = r.antialias(covered.float(), rast, clip, faces, topology, self.cfg.pos_gradient_boost)

        normals = vertex_normals(vertices, mesh.faces)
        gb_normal = F.normalize(r.interpolate(normals, rast, faces), dim=-1)
        camera_positions = camera_positions.reshape(batch, 3).to(vertices)
        distances = (vertices[None] - camera_positions[:, None]).norm(dim=-1, keepdim=True)  # (B, V, 1)
        depth = r.interpolate(distances, rast, faces)
        out: dict[str, Any] = {
            "opacity": opacity,
            "depth": depth,
            "comp_normal": torch.where(covered, gb_normal, torch.zeros_like(gb_normal)),
            "mesh": mesh,
            "rast": rast,
        }
        if not render_rgb:
            return out

        gb_pos = r.interpolate(vertices, rast, faces)
        if rays_d is None:
            rays_d = camera_ray_directions(mvp_mtx, height, width)
        mask = covered[..., 0]
        positions = gb_pos[mask]
        dirs = rays_d[mask]
        lights = per_ray(light_positions, batch, height, width, "light_positions", positions.dtype,
                         positions.device).view(batch, height, width, 3)[mask]
        material_kwargs = render_options(kwargs)
        geo_out = self.geometry(positions, output_normal=False)
        shading_normal = gb_normal[mask]
        rgb = self.material(viewdirs=dirs, positions=positions, light_positions=lights,
                            shading_normal=shading_normal, normal=shading_normal, **geo_out, **material_kwargs)
        comp_rgb_fg = torch.zeros(batch, height, width, rgb.shape[-1], dtype=rgb.dtype, device=rgb.device)
        comp_rgb_fg = comp_rgb_fg.index_put((mask,), rgb)
        comp_rgb_bg = self.background(dirs=rays_d)
        if bg_color is None:
            bg = comp_rgb_bg
        else:
            bg = per_ray(bg_color, batch, height, width, "bg_color", comp_rgb_bg.dtype,
                         comp_rgb_bg.device).view(batch, height, width, -1)
        comp_rgb = torch.where(covered, comp_rgb_fg, bg.to(comp_rgb_fg.dtype))
        out.update({
            "comp_rgb": r.antialias(comp_rgb.contiguous(), rast, clip, faces, topology, self.cfg.pos_gradient_boost),
            "comp_rgb_fg": comp_rgb_fg,
            "comp_rgb_bg": comp_rgb_bg,
        })
        return out
