"""`nerf-volume-renderer`: occupancy-grid ray marching + volume rendering of an implicit geometry."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

import threestudio
from threestudio.models.renderers.base import VolumeRenderer, chunk_batch
from threestudio.models.renderers.occupancy_grid import OccupancyGridEstimator
from threestudio.models.renderers.volume_rendering import accumulate_along_rays, render_weight_from_density
from threestudio.utils.batch import per_ray, render_options
from threestudio.utils.config import ConfigError
from threestudio.utils.misc import cuda_package_available

logger = logging.getLogger(__name__)

ESTIMATOR_BACKENDS = ("auto", "torch", "nerfacc")


def nerfacc_available() -> bool:
    return cuda_package_available("nerfacc", "the PyTorch occupancy-grid estimator")


@threestudio.register("nerf-volume-renderer")
class NeRFVolumeRenderer(VolumeRenderer):
    """Renders `comp_rgb`, `opacity`, `depth`, `z_variance`, `comp_normal` per ray (B, H, W, C).

    Training outputs also carry the packed samples for regularisers: `weights`, `t_points`,
    `t_intervals`, `t_dirs`, `ray_indices`, `points` and the geometry outputs (`density`,
    `features`, `normal`, ...), each (N_samples, C). `comp_normal` is the opacity-weighted mean
    normal, normalised, in world space ([-1, 1]; zero where nothing was hit).
    """

    @dataclass
    class Config(VolumeRenderer.Config):
        num_samples_per_ray: int = 512
        eval_chunk_size: int = 160000
        randomized: bool = True
        near_plane: float = 0.0
        far_plane: float = 1e10
        return_comp_normal: bool = False
        return_normal_perturb: bool = False
        estimator: str = "occgrid"
        # auto: nerfacc on CUDA when importable, else the PyTorch occupancy grid
        estimator_backend: str = "auto"
        grid_prune: bool = True
        prune_alpha_threshold: bool = True
        occ_grid_resolution: int = 32
        occ_grid_levels: int = 1
        occ_update_every_n_steps: int = 16
        occ_thre: float = 0.01
        occ_ema_decay: float = 0.95
        occ_warmup_steps: int = 256
        alpha_threshold: float = 0.01
        early_stop_eps: float = 1e-4

    cfg: Config

    def configure(self, geometry: Any, material: Any, background: Any) -> None:
        super().configure(geometry, material, background)
        if self.cfg.estimator != "occgrid":
            raise ConfigError(
                f"{self.config_path}.estimator '{self.cfg.estimator}' is not supported; use 'occgrid'."
            )
        if self.cfg.estimator_backend not in ESTIMATOR_BACKENDS:
            raise ConfigError(
                f"{self.config_path}.estimator_backend must be one of {ESTIMATOR_BACKENDS}, got '{self.cfg.estimator_backend}'."
            )
        if self.cfg.num_samples_per_ray <= 0:
            raise ConfigError(f"{self.config_path}.num_samples_per_ray must be positive, got {self.cfg.num_samples_per_ray}.")
        roi = self.bbox.view(-1)
        backend = self.cfg.estimator_backend
        if backend == "auto":
            backend = "nerfacc" if nerfacc_available() else "torch"
        elif backend == "nerfacc" and not nerfacc_available():
            raise ConfigError(f"{self.config_path}.estimator_backend='nerfacc' needs CUDA and the nerfacc package.")
        self.estimator_backend = backend
        self.estimator: nn.Module
        if backend == "nerfacc":
            import nerfacc

            self.estimator = nerfacc.OccGridEstimator(
                roi_aabb=roi, resolution=self.cfg.occ_grid_resolution, levels=self.cfg.occ_grid_levels)
        else:
            try:
                self.estimator = OccupancyGridEstimator(roi, self.cfg.occ_grid_resolution, self.cfg.occ_grid_levels)
            except ValueError as e:
                raise ConfigError(f"{self.config_path}: {e}") from None
        if not self.cfg.grid_prune:
            self.estimator.occs.fill_(1.0)
            self.estimator.binaries.fill_(True)
        # the step that puts num_samples_per_ray samples along the box diagonal
        self.render_step_size = 1.732 * 2 * self.cfg.radius / self.cfg.num_samples_per_ray

    @property
    def randomized(self) -> bool:
        """Stratified jitter in training only. Read from `self.training` at sampling time because Lightning
        restores train mode after validation by setting `module.training` directly, not through train()."""
        return self.training and self.cfg.randomized

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        if not self.cfg.grid_prune or not self.training or on_load_weights:
            return

        def occ_eval_fn(x: torch.Tensor) -> torch.Tensor:
            # density * step approximates the opacity 1 - exp(-density * step) of one sample
            return self.geometry.forward_density(x) * self.render_step_size

        self.estimator.update_every_n_steps(
            step=global_step, occ_eval_fn=occ_eval_fn, occ_thre=self.cfg.occ_thre,
            ema_decay=self.cfg.occ_ema_decay, warmup_steps=self.cfg.occ_warmup_steps,
            n=self.cfg.occ_update_every_n_steps,
        )

    # ------------------------------------------------------------------ rendering
    def _sample(self, rays_o: torch.Tensor, rays_d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        chunk = 0 if self.training else self.cfg.eval_chunk_size

        def sigma_fn(t_starts: torch.Tensor, t_ends: torch.Tensor, ray_indices: torch.Tensor) -> torch.Tensor:
            t_mid = ((t_starts + t_ends) * 0.5)[:, None]
            positions = rays_o[ray_indices] + rays_d[ray_indices] * t_mid
            return chunk_batch(self.geometry.forward_density, chunk, positions)[..., 0]

        prune = self.cfg.grid_prune and self.cfg.prune_alpha_threshold
        kwargs: dict[str, Any] = dict(
            sigma_fn=sigma_fn if prune else None,
            near_plane=self.cfg.near_plane, far_plane=self.cfg.far_plane,
            render_step_size=self.render_step_size,
            alpha_thre=self.cfg.alpha_threshold if prune else 0.0,
            early_stop_eps=self.cfg.early_stop_eps if prune else 0.0,
            stratified=self.randomized,
        )
        if self.estimator_backend == "nerfacc":
            kwargs["cone_angle"] = 0.0
        with torch.no_grad():
            ray_indices, t_starts, t_ends = self.estimator.sampling(rays_o, rays_d, **kwargs)
        return ray_indices.long(), t_starts, t_ends

    def _shade(self, positions: torch.Tensor, t_dirs: torch.Tensor, t_lights: torch.Tensor,
               material_kwargs: dict[str, Any]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        need_normal = bool(self.material.requires_normal) or (
            self.cfg.return_comp_normal and getattr(self.geometry.cfg, "normal_type", None) is not None)

        def run(positions: torch.Tensor, t_dirs: torch.Tensor, t_lights: torch.Tensor):
            geo_out = self.geometry(positions, output_normal=need_normal)
            rgb = self.material(viewdirs=t_dirs, positions=positions, light_positions=t_lights,
                                **geo_out, **material_kwargs)
            return geo_out, rgb

        if self.training:
            return run(positions, t_dirs, t_lights)
        geo_out = chunk_batch(lambda p: self.geometry(p, output_normal=need_normal), self.cfg.eval_chunk_size,
                              positions)
        rgb = chunk_batch(
            lambda p, d, l, **g: self.material(viewdirs=d, positions=p, light_positions=l, **g, **material_kwargs),
            self.cfg.eval_chunk_size, positions, t_dirs, t_lights, **geo_out)
        return geo_out, rgb

    def forward(self, rays_o: torch.Tensor, rays_d: torch.Tensor, light_positions: torch.Tensor,
                bg_color: Optional[torch.Tensor] = None, **options: Any) -> dict[str, torch.Tensor]:
        """Render B views of H x W rays (the camera batch contract, threestudio/utils/batch.py).

        rays_o, rays_d (B, H, W, 3); light_positions (B, 3) per view or (B, H, W, 3) per ray; bg_color (C,),
        (B, C) or (B, H, W, C), default: the background module. `options` go to the material (e.g.
        shading="albedo", ambient_ratio=0.1); other camera-batch keys are ignored, so `renderer(**batch)` works.
        """
        if rays_o.dim() != 4 or rays_o.shape[-1] != 3 or rays_d.shape != rays_o.shape:
            raise ValueError(
                f"rays_o and rays_d must both have shape (B, H, W, 3), got {tuple(rays_o.shape)} and {tuple(rays_d.shape)}."
            )
        batch_size, height, width = rays_o.shape[:3]
        n_rays = batch_size * height * width
        rays_o_flat = rays_o.reshape(-1, 3)
        rays_d_flat = rays_d.reshape(-1, 3)
        lights_flat = per_ray(light_positions, batch_size, height, width, "light_positions", rays_o.dtype,
                              rays_o.device)
        material_kwargs = render_options(options)

        ray_indices, t_starts, t_ends = self._sample(rays_o_flat, rays_d_flat)
        t_starts, t_ends = t_starts[:, None], t_ends[:, None]
        t_origins = rays_o_flat[ray_indices]
        t_dirs = rays_d_flat[ray_indices]
        t_lights = lights_flat[ray_indices]
        t_positions = (t_starts + t_ends) * 0.5
        t_intervals = t_ends - t_starts
        positions = t_origins + t_dirs * t_positions

        geo_out, rgb_fg_all = self._shade(positions, t_dirs, t_lights, material_kwargs)
        comp_rgb_bg = self.background(dirs=rays_d)

        weights, _, _ = render_weight_from_density(t_starts[:, 0], t_ends[:, 0], geo_out["density"][:, 0],
                                                   ray_indices, n_rays)
        opacity = accumulate_along_rays(weights, ray_indices, n_rays)
        depth = accumulate_along_rays(weights, ray_indices, n_rays, values=t_positions)
        comp_rgb_fg = accumulate_along_rays(weights, ray_indices, n_rays, values=rgb_fg_all)

        # z-variance (HiFA): spread of the sample depths under the normalised weights
        weights_normalized = weights / opacity.clamp(min=1e-5)[ray_indices, 0]
        z_mean = accumulate_along_rays(weights_normalized, ray_indices, n_rays, values=t_positions)
        z_variance = accumulate_along_rays(weights_normalized, ray_indices, n_rays,
                                           values=(t_positions - z_mean[ray_indices]) ** 2)
        z_variance = z_variance * (opacity > 0.5).float()

        bg = self._background_color(bg_color, comp_rgb_bg, batch_size, height, width)
        comp_rgb = comp_rgb_fg + bg * (1.0 - opacity)

        def image(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch_size, height, width, -1)

        out: dict[str, Any] = {
            "comp_rgb": image(comp_rgb),
            "comp_rgb_fg": image(comp_rgb_fg),
            "comp_rgb_bg": image(comp_rgb_bg.reshape(n_rays, -1)),
            "opacity": image(opacity),
            "depth": image(depth),
            "z_variance": image(z_variance),
        }
        if "normal" in geo_out and (self.cfg.return_comp_normal or not self.training):
            comp_normal = accumulate_along_rays(weights, ray_indices, n_rays, values=geo_out["normal"])
            out["comp_normal"] = image(F.normalize(comp_normal, dim=-1))
        if self.training:
            out.update({
                "weights": weights[:, None],
                "t_points": t_positions,
                "t_intervals": t_intervals,
                "t_dirs": t_dirs,
                "ray_indices": ray_indices,
                "points": positions,
                **geo_out,
            })
            if "normal" in geo_out and self.cfg.return_normal_perturb:
                perturbed = positions + torch.randn_like(positions) * 1e-2
                out["normal_perturb"] = self.geometry(perturbed, output_normal=True)["normal"]
        return out

    @staticmethod
    def _background_color(bg_color: Optional[torch.Tensor], comp_rgb_bg: torch.Tensor, batch_size: int,
                          height: int, width: int) -> torch.Tensor:
        if bg_color is None:
            return comp_rgb_bg.reshape(batch_size * height * width, -1)
        return per_ray(bg_color, batch_size, height, width, "bg_color", comp_rgb_bg.dtype, comp_rgb_bg.device)
