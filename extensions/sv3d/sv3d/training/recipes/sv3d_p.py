"""SV3D_p fine-tuning on custom orbits: ids [cond_aug, polar_rad, azimuth_rad] per frame, the condition view last."""

from __future__ import annotations

import math

import torch

from ..surgery import svd_cond_aug_columns, with_added_embedding
from . import Recipe, register_recipe


@register_recipe
class SV3DPosedRecipe(Recipe):
    """From sv3d_p as is; from sv3d_u or SVD(-xt): the cond_aug columns are kept (SVD's 512:768) and the new polar
    and azimuth columns (512 each) start at zero, so the first step behaves like the source."""

    name = "sv3d_p"
    source_versions = ("sv3d_p", "sv3d_u", "svd_xt", "svd")
    export_version = "sv3d_p"
    condition_last = True
    defaults = {"data.num_frames": 21, "loss.weighting": "edm", "loss.cfg_mode": "sample", "loss.cfg_rate": 0.1}

    def build_unet(self, source_unet, source_version, generator):
        if source_version == "sv3d_p":
            return source_unet

        def grow(w: torch.Tensor) -> torch.Tensor:
            cond_aug = w if source_version == "sv3d_u" else svd_cond_aug_columns(w)
            return torch.cat([cond_aug, torch.zeros(w.shape[0], 1024)], dim=1)

        return with_added_embedding(source_unet, (256, 512, 512), grow)

    def added_time_ids(self, noise_aug: torch.Tensor, batch) -> torch.Tensor:
        """Polar = 90 deg - elevation; azimuth relative to the last (condition) frame, in [0, 2 pi) (sv3d_p_camera_ids)."""
        elev = batch["elevation_deg"].float()
        az = batch["azimuth_deg"].float()
        rel = torch.remainder(az - az[:, -1:], 360.0)
        polar = torch.deg2rad(90.0 - elev)
        return torch.stack([noise_aug.float()[:, None].expand_as(elev), polar, rel * (math.pi / 180.0)], dim=-1)
