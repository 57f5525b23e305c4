"""SVD-MV (king159/svd-mv): SVD-xt -> an F-view generator conditioned on one image and its elevation."""

from __future__ import annotations

import torch

from ..surgery import default_linear_init, with_added_embedding
from . import Recipe, register_recipe


@register_recipe
class SVDMultiViewRecipe(Recipe):
    """Added ids per frame [noise-aug strength, elevation in degrees], each a 256-wide sinusoid. From SVD(-xt),
    only `add_embedding.linear_1.weight` (time_embed_dim x 512) is re-initialised (nn.Linear's init), its bias
    and every other tensor load from the source (the reference's `ignore_mismatched_sizes`)."""

    name = "svd_mv"
    source_versions = ("svd_xt", "svd", "svd_mv")
    export_version = "svd_mv"
    condition_last = False
    defaults = {
        "data.num_frames": 7,  # the reference's shipped train_local_svd_mv.yaml (21 is its argparse default)
        "loss.weighting": "svd_mv_reference",
        "loss.cfg_mode": "batch",
        "loss.cfg_rate": 0.2,
    }

    def build_unet(self, source_unet, source_version, generator):
        if source_version == "svd_mv":
            return source_unet
        return with_added_embedding(source_unet, (256, 256), lambda w: default_linear_init((w.shape[0], 512), generator))

    def added_time_ids(self, noise_aug: torch.Tensor, batch) -> torch.Tensor:
        elev = batch["elevation_deg"].float()
        return torch.stack([noise_aug.float()[:, None].expand_as(elev), elev], dim=-1)
