"""Hi3D stage-1 recipe on the shared `sv3d.training` loop: SVD-xt -> 16-view orbit generator.

    recipe: hi3d.training.recipe_stage1:Hi3DStage1Recipe     (data.format: hi3d, data.resolution: 512)

Vector slots [aesthetic | elevation | cond_aug] keep SVD's 768-wide added embedding as is (the reference trains
it from SVD's [fps | motion | cond_aug] weights); only the slot kinds change: the aesthetic slot is
[score, sinusoid(100 score, 255)] of the clip's middle view scored by CLIP ViT-L/14 + the LAION MLP.
"""

from __future__ import annotations

import torch

from sv3d.training.recipes import Recipe, register_recipe
from sv3d.unet import SV3DUNet

from ..specs import stage_spec
from . import frozen_aux


def with_slot_kinds(source: SV3DUNet, kinds) -> SV3DUNet:
    """A copy of `source` whose added-id slots are embedded as `kinds`; every tensor loads as is."""
    cfg = {k: v for k, v in dict(source.config).items() if not k.startswith("_")}
    cfg["addition_time_embed_kinds"] = tuple(kinds)
    unet = SV3DUNet(**cfg)
    unet.load_state_dict(source.state_dict(), strict=True)
    return unet.to(next(source.parameters()).dtype)


@register_recipe
class Hi3DStage1Recipe(Recipe):
    name = "hi3d_stage1"
    source_versions = ("svd_xt_image_decoder", "svd_xt", "svd_image_decoder", "svd")
    export_version = "svd_xt_image_decoder"  # same tensors; the export loads with hi3d.Hi3DPipeline.from_single_file
    condition_last = False
    cfg_dropped = ("concat", "context")
    # CFG dropout 0.1 per sample (ucg_rate of the CLIP and cond-frame embedders), EDM weighting (sigma^2+1)/sigma^2
    defaults = {"data.num_frames": 16, "loss.weighting": "edm", "loss.cfg_mode": "sample", "loss.cfg_rate": 0.1}

    def build_unet(self, source_unet, source_version, generator):
        return with_slot_kinds(source_unet, stage_spec("stage1").extra["vector_kinds"])

    def aesthetic_scores(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, F, 3, H, W) -> (B,) predicted score of each clip's middle view (the reference's AesEmbedder)."""
        scorer = frozen_aux.aesthetic_scorer(frames.device)
        return scorer(frames[:, frames.shape[1] // 2])

    @torch.no_grad()
    def conditioning(self, batch, models, noise_aug, aug_noise):
        if "frames" not in batch or batch["frames"].shape[1] < 2:
            raise ValueError("hi3d_stage1 scores the clip's middle view: the latent cache (one frame per clip) is not supported")
        batch = dict(batch, aesthetic=self.aesthetic_scores(batch["frames"]))
        return super().conditioning(batch, models, noise_aug, aug_noise)

    def added_time_ids(self, noise_aug: torch.Tensor, batch) -> torch.Tensor:
        """(B, F, 3) [aesthetic score, elevation (integer degrees), noise-aug strength], the same for every frame."""
        elev = batch["elevation_deg"].float()
        b, f = elev.shape
        per_clip = torch.stack([batch["aesthetic"].float().to(elev.device), elev[:, 0].round(), noise_aug.float()], dim=-1)
        return per_clip[:, None].expand(b, f, 3)
