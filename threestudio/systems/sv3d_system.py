"""`sv3d-system`: image-to-3D with SV3D score distillation (like threestudio's zero123 system).

Every step: RGB + mask losses of the reference view (the input image at its camera), and, from step
`ref_only_steps` on, SV3D SDS on the rendered 21-view orbit (frames outside the guidance's `grad_frames` are
rendered without autograd). Optional (the SV3D paper's recipe): at the start of training SV3D samples one orbit
from the input image, saved under `save/sv3d_orbit/` (reloaded on resume), and the orbit renders are fitted to it
with MSE + mask losses (`orbit_rgb`, `orbit_mask`). Regularisers: orient, sparsity, opaque, 2-D and 3-D normal
smoothness. `--test` renders the video, `--export` the textured mesh (BaseLift3DSystem).
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

import threestudio
from threestudio.data.multiview_sources import mask_from_background, read_image
from threestudio.systems.lift3d import BaseLift3DSystem
from threestudio.utils.base import build_module
from threestudio.utils.batch import CameraBatch, render_inputs

@threestudio.register("sv3d-system")
class SV3DSystem(BaseLift3DSystem):
    @dataclass
    class Config(BaseLift3DSystem.Config):
        guidance_type: str = "sv3d-guidance"
        guidance: dict = field(default_factory=dict)
        # steps fitting only the reference view before SDS starts
        ref_only_steps: int = 0
        # shading of the reference view (materials with shading choices: "albedo" fits the input's colours)
        ref_shading: Optional[str] = "albedo"
        # SV3D paper recipe: fit the orbit renders to one orbit sampled by SV3D at the start
        photometric_orbit: bool = False
        photometric_orbit_steps: int = 50  # Euler steps of that sampling
        photometric_orbit_seed: int = 23
        photometric_mask_threshold: float = 0.02  # SV3D frames are on white: mask = differs from white by this

    cfg: Config

    def configure(self) -> None:
        super().configure()
        self.guidance = build_module(self.cfg.guidance_type, self.cfg.guidance, "system.guidance")
        self.reference_orbit: Optional[tuple[Tensor, Tensor]] = None

    # ------------------------------------------------------------------ rendering
    def _render(self, camera: CameraBatch, **options: Any) -> dict[str, Tensor]:
        """Render a camera batch; `options` (None: left out) go to the material."""
        return self.renderer(**render_inputs(camera, self.renderer.inputs),
                             **{k: v for k, v in options.items() if v is not None})

    def render_orbit(self, orbit: dict, grad_frames: Optional[Tensor]) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Render the N orbit views; only `grad_frames` (None: all) with autograd.

        Returns rgb (N, H, W, 3), opacity (N, H, W, 1) and the renderer output of the gradient frames.
        """
        n = orbit["rays_o"].shape[0]
        if grad_frames is None:
            out = self._render(orbit)
            return out["comp_rgb"], out["opacity"], out
        grad_idx = grad_frames.to(orbit["rays_o"].device)
        plain = torch.ones(n, dtype=torch.bool, device=grad_idx.device)
        plain[grad_idx] = False
        plain_idx = plain.nonzero().flatten()

        def pick(idx: Tensor) -> dict:
            return {k: (v[idx.to(v.device)] if torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == n else v)
                    for k, v in orbit.items()}

        out = self._render(pick(grad_idx))
        with torch.no_grad():
            rest = self._render(pick(plain_idx)) if len(plain_idx) else None
        rgb = out["comp_rgb"].new_zeros((n, *out["comp_rgb"].shape[1:]))
        opacity = out["opacity"].new_zeros((n, *out["opacity"].shape[1:]))
        rgb = rgb.index_put((grad_idx,), out["comp_rgb"])
        opacity = opacity.index_put((grad_idx,), out["opacity"])
        if rest is not None:
            rgb = rgb.index_put((plain_idx,), rest["comp_rgb"])
            opacity = opacity.index_put((plain_idx,), rest["opacity"])
        return rgb, opacity, out

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        losses: dict[str, Tensor] = {}
        ref = self._render(batch, shading=self._ref_shading())
        gt_mask = batch["mask"]
        # targets are the input on white; put them on the rendered background instead: rgb + (bg - 1)(1 - mask)
        gt_rgb = batch["rgb"] + (ref["comp_rgb_bg"] - 1.0) * (1.0 - gt_mask)
        losses["rgb"] = F.mse_loss(ref["comp_rgb"], gt_rgb)
        losses["mask"] = F.mse_loss(ref["opacity"], gt_mask)
        reg_out = ref

        if self.true_global_step >= self.cfg.ref_only_steps and "orbit" in batch:
            orbit = batch["orbit"]
            grad_frames = self.guidance.sample_grad_frames()
            rgb, opacity, orbit_out = self.render_orbit(orbit, grad_frames)
            guidance_out = self.guidance(rgb, elevation=orbit["elevation"], azimuth=orbit["azimuth_relative"],
                                         grad_frames=grad_frames)
            losses["sds"] = guidance_out["loss_sds"]
            self.log("train/grad_norm", guidance_out["grad_norm"])
            self.log("train/sigma", guidance_out["sigma"])
            if self.cfg.photometric_orbit:
                losses.update(self._photometric_losses(orbit_out, grad_frames, rgb.shape[0]))
            reg_out = orbit_out

        losses.update(self.regularizer_losses(reg_out))
        return self.combine_losses(losses)

    def _ref_shading(self) -> Optional[str]:
        # only materials with shading choices take the option
        return self.cfg.ref_shading if hasattr(self.material, "_pick_shading") else None

    # ------------------------------------------------------------------ SV3D orbit (photometric recipe)
    def _orbit_dir(self) -> str:
        return os.path.join(self.get_save_dir(), "sv3d_orbit")

    def on_fit_start(self) -> None:
        # the prior loads when training starts (never for --test/--export), so errors come before any step
        self.guidance.load_prior()
        if self.cfg.photometric_orbit:
            self.reference_orbit = self.load_or_sample_orbit()

    def on_fit_end(self) -> None:
        # testing and exporting after training do not need the prior's memory
        self.guidance.prior.release()

    def load_or_sample_orbit(self) -> tuple[Tensor, Tensor]:
        """(frames (N, S, S, 3) on white, masks (N, S, S, 1)) of the SV3D orbit, sampled once per trial."""
        folder = self._orbit_dir()
        n = self.guidance.cfg.num_frames
        files = sorted(glob.glob(os.path.join(folder, "*.png")), key=lambda p: int(os.path.basename(p)[:-4]))
        if len(files) == n:
            frames = torch.from_numpy(np.stack([read_image(f)[..., :3] for f in files]))
        else:
            frames = self.guidance.sample_orbit(self.cfg.photometric_orbit_steps, self.cfg.photometric_orbit_seed)
            # the 8-bit values the PNGs keep: a resumed run, which reads them back, fits the same targets
            frames = torch.floor(frames.permute(0, 2, 3, 1).float().cpu().clamp(0, 1) * 255 + 0.5) / 255
            if self._trainer is None or self.trainer.is_global_zero:
                for i, frame in enumerate(frames):
                    self.save_image(f"sv3d_orbit/{i}.png", frame)
        masks = torch.from_numpy(np.stack([
            mask_from_background(f.numpy(), "white", self.cfg.photometric_mask_threshold) for f in frames]))
        return frames, masks

    def _photometric_losses(self, out: dict[str, Tensor], grad_frames: Optional[Tensor], n: int) -> dict[str, Tensor]:
        if self.reference_orbit is None:
            self.reference_orbit = self.load_or_sample_orbit()
        frames, masks = self.reference_orbit
        idx = torch.arange(n) if grad_frames is None else grad_frames.cpu()
        h, w = out["comp_rgb"].shape[1:3]

        def fit(x: Tensor) -> Tensor:
            x = x[idx].permute(0, 3, 1, 2)
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=x.shape[-1] > w)
            return x.permute(0, 2, 3, 1).to(out["comp_rgb"])

        target_rgb, target_mask = fit(frames), fit(masks)
        target_rgb = target_rgb + (out["comp_rgb_bg"] - 1.0) * (1.0 - target_mask)
        return {"orbit_rgb": F.mse_loss(out["comp_rgb"], target_rgb),
                "orbit_mask": F.mse_loss(out["opacity"], target_mask)}
