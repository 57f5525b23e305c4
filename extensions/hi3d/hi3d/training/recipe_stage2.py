"""Hi3D stage-2 recipe on the shared `sv3d.training` loop: SVD-xt -> 1024² video-to-video refiner with depth.

    recipe: hi3d.training.recipe_stage2:Hi3DStage2Recipe     (data.format: hi3d, data.resolution: 1024)

Per clip: the 16 clean views are the targets; the conditioning frames are their Real-ESRGAN second-order
degradations (frame 0 clean), each plus the clip's noise augmentation; concat = [depth of the noisy degraded frames
(9) | their VAE latents (4)] per frame; CLIP of the clean frame 0; vector [elevation | cond_aug]. The surgery is
`hi3d.make_stage2_init`'s (conv_in 8 -> 17 with 9 zero channels, added embedding [zeros | SVD's cond_aug columns]).
"""

from __future__ import annotations

import torch

from sv3d.preprocess import clip_preprocess
from sv3d.training.recipes import Conditioning, Recipe, register_recipe
from sv3d.unet import SV3DUNet

from ..specs import stage_spec
from . import frozen_aux
from .degradations import degrade_clip

WHITE = 220.0 / 255.0 * 2.0 - 1.0  # the reference's background test (all channels > 220)


def stage2_unet_from_svd(source: SV3DUNet) -> SV3DUNet:
    """SVD UNet (8 channels, 768-wide vector) -> stage-2 UNet (17 channels, 512-wide), as make_stage2_init."""
    spec = stage_spec("stage2")
    cfg = {k: v for k, v in dict(source.config).items() if not k.startswith("_")}
    cfg.update(in_channels=17, projection_class_embeddings_input_dim=512, addition_time_embed_dims=(256, 256),
               addition_time_embed_dim=256, addition_time_embed_kinds=tuple(spec.extra["vector_kinds"]))
    unet = SV3DUNet(**cfg)
    sd = dict(source.state_dict())
    conv = sd["conv_in.weight"]
    if conv.shape[1] != 8 or sd["add_embedding.linear_1.weight"].shape[1] != 768:
        raise ValueError("the stage-2 surgery starts from SVD's 8-channel, 768-wide UNet")
    sd["conv_in.weight"] = torch.cat([conv[:, :4], conv.new_zeros(conv.shape[0], 9, *conv.shape[2:]), conv[:, 4:]], 1)
    w = sd["add_embedding.linear_1.weight"]
    sd["add_embedding.linear_1.weight"] = torch.cat([torch.zeros_like(w[:, :256]), w[:, 512:]], 1)
    unet.load_state_dict(sd, strict=True)
    return unet.to(next(source.parameters()).dtype)


@register_recipe
class Hi3DStage2Recipe(Recipe):
    name = "hi3d_stage2"
    source_versions = ("svd_xt_image_decoder", "svd_xt", "svd_image_decoder", "svd")
    export_version = "svd_xt_image_decoder"  # the export loads with hi3d.Hi3DPipeline.from_single_file
    condition_last = False
    cfg_dropped = ("concat", "context")  # the depth channels share the dropped cond_frames input
    defaults = {"data.num_frames": 16, "loss.weighting": "edm", "loss.cfg_mode": "sample", "loss.cfg_rate": 0.1}

    def build_unet(self, source_unet, source_version, generator):
        return stage2_unet_from_svd(source_unet)

    @torch.no_grad()
    def conditioning(self, batch, models, noise_aug, aug_noise):
        frames = batch.get("frames")
        if frames is None or frames.shape[1] < 2:
            raise ValueError("hi3d_stage2 degrades every view: the latent cache (one frame per clip) is not supported")
        b, f = frames.shape[:2]
        vae, enc = models.vae, models.image_encoder
        vdtype = next(vae.parameters()).dtype
        latents = vae.encode(frames.flatten(0, 1).to(vdtype)).latent_dist.mode().unflatten(0, (b, f)) * models.scale_factor
        context = enc(pixel_values=clip_preprocess(frames[:, 0].float(), enc.config.image_size).to(next(enc.parameters()).dtype)).image_embeds[:, None]
        depth_model = frozen_aux.depth_conditioner(frames.device)
        concats = []
        for i in range(b):
            # the clip's degradation and per-frame noise, reproducible from the loop's keyed aug_noise draw
            seed = int(torch.randint(0, 2 ** 62, (), generator=torch.Generator().manual_seed(int((aug_noise[i, 0, 0, 0].item() + 10) * 1e6))))
            g = torch.Generator().manual_seed(seed)
            masks = ~(frames[i] > WHITE).all(dim=1)
            lq = degrade_clip(frames[i], masks, g).to(frames.device)
            noise = torch.randn(lq.shape, generator=g).to(lq.device)
            noise[0] = aug_noise[i].to(lq.device)
            noisy = lq + noise_aug[i].to(lq.dtype) * noise
            cond = vae.encode(noisy.to(vdtype)).latent_dist.mode().float()
            concats.append(torch.cat([depth_model(noisy).float(), cond], dim=1))
        ids = self.added_time_ids(noise_aug, batch)
        return Conditioning(latents.float(), torch.stack(concats), context.float(), ids)

    def added_time_ids(self, noise_aug: torch.Tensor, batch) -> torch.Tensor:
        """(B, F, 2) [elevation (integer degrees), noise-aug strength] for every frame."""
        elev = batch["elevation_deg"].float()
        b, f = elev.shape
        return torch.stack([elev[:, 0].round(), noise_aug.float().to(elev.device)], dim=-1)[:, None].expand(b, f, 2)
