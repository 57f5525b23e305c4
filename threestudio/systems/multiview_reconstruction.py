"""`multiview-reconstruction-system`: fit a radiance field to posed images (photometric + mask losses),
then render the orbit video and export a textured mesh.

Stage 2/3 of the image-to-3D pipelines (an SV3D orbit or Hi3D views -> 3D) and the embedded main job
(`configs/reconstruction-example.yaml`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

import threestudio
from threestudio.systems.lift3d import BaseLift3DSystem
from threestudio.utils.config import ConfigError

RGB_LOSSES = ("mse", "l1", "smooth_l1")
RENDER_KEYS = ("rays_o", "rays_d", "light_positions", "bg_color")


def psnr(pred: Tensor, target: Tensor) -> float:
    """Peak signal-to-noise ratio (dB) of images in [0,1]."""
    mse = F.mse_loss(pred.clamp(0, 1).float(), target.float()).item()
    return 10.0 * math.log10(1.0 / max(mse, 1e-12))


def distortion_loss(weights: Tensor, t_mid: Tensor, t_intervals: Tensor, ray_indices: Tensor, n_rays: int) -> Tensor:
    """Mip-NeRF 360 distortion loss on packed samples (sorted by ray, then by t), averaged over rays:
    sum_ij w_i w_j |t_i - t_j| + 1/3 sum_i w_i^2 delta_i, in O(N) with per-ray prefix sums."""
    w, t, d = weights.reshape(-1), t_mid.reshape(-1), t_intervals.reshape(-1)
    if w.numel() == 0:
        return w.sum()

    def exclusive_segment_cumsum(x: Tensor) -> Tensor:
        inclusive = torch.cumsum(x, 0)
        exclusive = inclusive - x
        counts = torch.bincount(ray_indices, minlength=n_rays)
        starts = torch.cumsum(counts, 0) - counts
        return exclusive - exclusive[starts.clamp(max=x.numel() - 1)][ray_indices]

    # for sorted t: sum_{i,j} w_i w_j |t_i - t_j| = 2 sum_i w_i (t_i W_<i - (wt)_<i)
    w_before = exclusive_segment_cumsum(w)
    wt_before = exclusive_segment_cumsum(w * t)
    inter = 2.0 * (w * (t * w_before - wt_before)).sum()
    intra = (w * w * d).sum() / 3.0
    return (inter + intra) / n_rays


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
        if self.cfg.rgb_loss not in RGB_LOSSES:
            raise ConfigError(f"system.rgb_loss must be one of {RGB_LOSSES}, got '{self.cfg.rgb_loss}'.")

    # ----------------------------------------------------------------------------- rendering
    def render(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        return self.renderer(**{k: batch[k] for k in RENDER_KEYS if k in batch})

    @torch.no_grad()
    def render_view(self, batch: dict[str, Any], normals: bool = False) -> dict[str, Tensor]:
        """A whole (1,H,W) view rendered in chunks of rays; returns the image-shaped outputs
        (with `comp_normal` when `normals` is set and the geometry has normals)."""
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
        bg = batch.get("bg_color")
        chunk = max(1, self.cfg.eval_chunk_rays)
        parts: list[dict[str, Tensor]] = []
        for start in range(0, flat_o.shape[1], chunk):
            sub = {"rays_o": flat_o[:, start:start + chunk], "rays_d": flat_d[:, start:start + chunk],
                   "light_positions": batch["light_positions"]}
            if bg is not None:
                sub["bg_color"] = bg if bg.dim() == 1 else bg.reshape(1, -1, 1, bg.shape[-1])[:, start:start + chunk]
            out = self.render(sub)
            parts.append({k: v for k, v in out.items() if torch.is_tensor(v) and v.dim() == 4 and v.shape[1] > 0
                          and v.shape[2] == 1})
        keys = set(parts[0]).intersection(*parts[1:]) if len(parts) > 1 else set(parts[0])
        return {k: torch.cat([p[k] for p in parts], dim=1).reshape(1, height, width, -1) for k in keys}

    # ------------------------------------------------------------------------------ training
    def _rgb_loss(self, pred: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        if self.cfg.rgb_loss == "mse":
            err = (pred - target) ** 2
        elif self.cfg.rgb_loss == "l1":
            err = (pred - target).abs()
        else:
            err = F.smooth_l1_loss(pred, target, reduction="none", beta=0.1)
        if weight is None:
            return err.mean()
        return (err * weight).sum() / (weight.sum() * err.shape[-1]).clamp_min(1.0)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        out = self.render(batch)
        losses = self.training_losses(out, batch)
        self.log("train/psnr", psnr(out["comp_rgb"].detach(), batch["rgb"]), prog_bar=True)
        return self.combine_losses(losses)

    def training_losses(self, out: dict[str, Tensor], batch: dict[str, Any]) -> dict[str, Tensor]:
        """The unweighted loss terms of one training batch and its render."""
        target, mask = batch["rgb"], batch["mask"]
        opacity = out["opacity"].clamp(1e-5, 1.0 - 1e-5)
        pred = out["comp_rgb_fg"] if self.cfg.rgb_loss_masked else out["comp_rgb"]
        tgt = target * mask if self.cfg.rgb_loss_masked else target
        losses = {
            "rgb": self._rgb_loss(pred, tgt, (mask > 0.5).float() if self.cfg.rgb_loss_masked else None),
            "mask": F.binary_cross_entropy(opacity, mask.clamp(0, 1)),
            "sparsity": (out["opacity"] ** 2 + 0.01).sqrt().mean(),
            "opaque": (-opacity * torch.log(opacity) - (1 - opacity) * torch.log(1 - opacity)).mean(),
        }
        if self.loss_weight("z_variance") > 0:
            losses["z_variance"] = out["z_variance"].mean()
        if self.loss_weight("distortion") > 0 and "weights" in out:
            n_rays = out["opacity"].numel()
            losses["distortion"] = distortion_loss(out["weights"], out["t_points"], out["t_intervals"],
                                                   out["ray_indices"], n_rays)
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
