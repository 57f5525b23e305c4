"""SV3D_u fine-tuning on custom orbits: ids [cond_aug] per frame, the condition view last."""

from __future__ import annotations

import torch

from ..surgery import svd_cond_aug_columns, with_added_embedding
from . import Recipe, register_recipe


@register_recipe
class SV3DUnposedRecipe(Recipe):
    """From sv3d_u as is; from SVD(-xt) the added-embedding weight keeps SVD's cond_aug columns (512:768)."""

    name = "sv3d_u"
    source_versions = ("sv3d_u", "svd_xt", "svd")
    export_version = "sv3d_u"
    condition_last = True
    defaults = {"data.num_frames": 21, "loss.weighting": "edm", "loss.cfg_mode": "sample", "loss.cfg_rate": 0.1}

    def build_unet(self, source_unet, source_version, generator):
        if source_version == "sv3d_u":
            return source_unet
        return with_added_embedding(source_unet, (256,), svd_cond_aug_columns)

    def added_time_ids(self, noise_aug: torch.Tensor, batch) -> torch.Tensor:
        f = batch["elevation_deg"].shape[1]
        return noise_aug.float()[:, None, None].expand(-1, f, 1).contiguous()
