"""`multiview-reconstruction-system`: fit a radiance field to posed images (photometric + mask losses),
then render the orbit video and export a textured mesh.

Stage 2/3 of the image-to-3D pipelines (an SV3D orbit or Hi3D views -> 3D) and the embedded main job
(`configs/reconstruction-example.yaml`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

import threestudio
from threestudio.models.renderers.base import Rasterizer
from threestudio.systems.lift3d import BaseLift3DSystem
from threestudio.utils.batch import render_inputs
from threestudio.utils.config import ConfigError
from threestudio.utils.losses import PHOTOMETRIC_LOSSES, mask_bce_loss, photometric_loss, psnr



@threestudio.register("multiview-reconstruction-system")
class MultiviewReconstructionSystem(BaseLift3DSystem):
    @dataclass
    class Config(BaseLift3DSystem.Config):
        rgb_loss: str = "mse"  # mse | l1 | smooth_l1
        # only pixels inside the mask count for the photometric loss (then the mask loss teaches the
        # silhouette); false: every pixel, composited on the batch's background
        rgb_loss_masked: bool = False
        # rays rendered at once in validation/test (memory bound)
        eval_chunk_rays: int = 16384
        # after the test video, also export the mesh (so --train gives checkpoint, video and mesh)
        export_after_test: bool = False

    cfg: Config

    def configure(self) -> None:
        super().configure()
        if self.cfg.rgb_loss not in PHOTOMETRIC_LOSSES:
            raise ConfigError(f"system.rgb_loss must be one of {PHOTOMETRIC_LOSSES}, got '{self.cfg.rgb_loss}'.")

    # ----------------------------------------------------------------------------- rendering
    def render(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        return self.renderer(**render_inputs(batch, self.renderer.inputs))

    @torch.no_grad()
    def render_view(self, batch: dict[str, Any], normals: bool = False) -> dict[str, Tensor]:
        """A whole (1,H,W) view rendered in chunks of rays; returns the image-shaped outputs
        (with `comp_normal` when `normals` is set and the geometry has normals)."""
        if isinstance(self.renderer, Rasterizer):
            return {k: v for k, v in self.render(batch).items() if torch.is_tensor(v) and v.dim() == 4}
        renderer_cfg = getattr(self.renderer, "cfg", None)
        if normals and renderer_cfg is not None and hasattr(renderer_cfg, "return_comp_normal"):
            # normals cost extra field evaluations: ask for them only for the images that show them
            previous = renderer_cfg.return_comp_normal
            renderer_cfg.return_comp_normal = True
            try:
                return self.render_view(batch, normals=False)
            finally:
                renderer_cfg.return_comp_normal = previous
        rays_o, rays_d = batch["rays_o"], batch["rays_d"]
        _, height, width, _ = rays_o.shape
        flat_o, flat_d = rays_o.reshape(1, -1, 1, 3), rays_d.reshape(1, -1, 1, 3)
        chunk = max(1, self.cfg.eval_chunk_rays)
        parts: list[dict[str, Tensor]] = []
        for start in range(0, flat_o.shape[1], chunk):
            sub = {"rays_o": flat_o[:, start:start + chunk], "rays_d": flat_d[:, start:start + chunk]}
            # per-view values (C,) / (1, C) apply to every chunk; per-ray ones (1, H, W, C) are cut like the rays
            for key in ("light_positions", "bg_color"):
                value = batch.get(key)
                if value is not None:
                    sub[key] = value if value.dim() < 4 else value.reshape(1, -1, 1, value.shape[-1])[:, start:start + chunk]
            out = self.render(sub)
            parts.append({k: v for k, v in out.items() if torch.is_tensor(v) and v.dim() == 4 and v.shape[1] > 0
                          and v.shape[2] == 1})
        keys = set(parts[0]).intersection(*parts[1:]) if len(parts) > 1 else set(parts[0])
        return {k: torch.cat([p[k] for p in parts], dim=1).reshape(1, height, width, -1) for k in keys}

    # ------------------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        out = self.render(batch)
        losses = self.training_losses(out, batch)
        self.log("train/psnr", psnr(out["comp_rgb"].detach(), batch["rgb"]), prog_bar=True)
        return self.combine_losses(losses)

    def training_losses(self, out: dict[str, Tensor], batch: dict[str, Any]) -> dict[str, Tensor]:
        """The unweighted loss terms of one training batch and its render."""
        target, mask = batch["rgb"], batch["mask"]
        pred = out["comp_rgb_fg"] if self.cfg.rgb_loss_masked else out["comp_rgb"]
        tgt = target * mask if self.cfg.rgb_loss_masked else target
        weight = (mask > 0.5).float() if self.cfg.rgb_loss_masked else None
        losses = {
            "rgb": photometric_loss(pred, tgt, self.cfg.rgb_loss, weight),
            "mask": mask_bce_loss(out["opacity"], mask),
            **self.regularizer_losses(out),
        }
        return losses

    # ---------------------------------------------------------------------------- evaluation
    def _eval_panels(self, out: dict[str, Tensor], batch: dict[str, Any], names: list) -> list[dict]:
        panels = [{"img": batch["rgb"][0]}] if "rgb" in batch else []
        return panels + self._panels(out, names)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        out = self.render_view(batch, normals="normal" in self.cfg.validation_panels)
        index = int(batch["index"][0]) if "index" in batch else batch_idx
        if "rgb" in batch:
            self.log("val/psnr", psnr(out["comp_rgb"], batch["rgb"]), on_epoch=True, batch_size=1)
        self.save_image_grid(f"{self.step_prefix()}-{index}.png",
                             self._eval_panels(out, batch, self.cfg.validation_panels))

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        out = self.render_view(batch, normals="normal" in self.cfg.test_panels)
        index = int(batch["index"][0]) if "index" in batch else batch_idx
        if "rgb" in batch:
            self.log("test/psnr", psnr(out["comp_rgb"], batch["rgb"]), on_epoch=True, batch_size=1)
        self.save_image_grid(f"{self.step_prefix()}-test/{index}.png", self._panels(out, self.cfg.test_panels))

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        if self.cfg.export_after_test:
            self.on_predict_epoch_end()
