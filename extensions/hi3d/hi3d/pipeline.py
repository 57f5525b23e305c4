"""Hi3D pipelines: the released stage files loaded into sv3d's diffusers modules, plus the stage's own embedders."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, Optional, Union

import torch

from sv3d.config import ModelSpec
from sv3d.convert_vae import strip_prefix
from sv3d.pipeline import SV3DPipeline

from .aesthetic import CLIP_L_FILE, MLP_FILE, AestheticScorer
from .checkpoint import load_stage_checkpoint
from .depth import MIDAS_FILE, DepthConditioner, load_midas_dpt_hybrid
from .loading import (
    OPEN_CLIP_FILE,
    Hi3DLoadReport,
    build_open_clip_image_encoder,
    build_stage_unet,
    build_stage_vaes,
    finish_report,
)
from .specs import detect_stage, stage_spec


@dataclass
class AuxFiles:
    """Auxiliary weight files of the reference's `ckpts/` folder (used where the stage file lacks the weights)."""

    open_clip: Optional[str] = None
    clip_l: Optional[str] = None
    aesthetic_mlp: Optional[str] = None
    midas: Optional[str] = None

    @classmethod
    def from_dir(cls, ckpt_dir: Optional[str]) -> "AuxFiles":
        """Look the files up under `ckpt_dir` with the reference's names (ViT-L-14.pt or .ckpt, metric_models/)."""
        if not ckpt_dir:
            return cls()

        def first(*names: str) -> Optional[str]:
            for n in names:
                p = os.path.join(ckpt_dir, n)
                if os.path.exists(p):
                    return p
            return None

        return cls(
            open_clip=first(OPEN_CLIP_FILE),
            clip_l=first(CLIP_L_FILE, "ViT-L-14.ckpt", "clip-vit-large-patch14"),
            aesthetic_mlp=first(os.path.join("metric_models", MLP_FILE), MLP_FILE),
            midas=first(MIDAS_FILE, "dpt-hybrid-midas"),
        )


class Hi3DPipeline(SV3DPipeline):
    """One Hi3D stage: UNet (SV3DUNet), conditioning VAE, first-stage autoencoder, ViT-H image encoder, and the
    stage's extra embedder (stage 1: aesthetic scorer; stage 2: depth conditioner)."""

    model_cpu_offload_seq = "image_encoder->aesthetic->depth->unet->vae"

    def __init__(self, unet, vae, image_encoder, spec: Optional[ModelSpec] = None,
                 load_report: Optional[Hi3DLoadReport] = None, first_stage=None,
                 aesthetic: Optional[AestheticScorer] = None, depth: Optional[DepthConditioner] = None):
        super().__init__(unet, vae, image_encoder, spec, load_report)
        self.register_modules(first_stage=first_stage.eval() if first_stage is not None else None,
                              aesthetic=aesthetic.eval() if aesthetic is not None else None,
                              depth=depth.eval() if depth is not None else None)

    @property
    def stage(self) -> str:
        return self.spec.version.replace("hi3d_", "")

    @classmethod
    def from_single_file(  # type: ignore[override]
        cls,
        path: Union[str, os.PathLike],
        stage: Optional[str] = None,
        aux: Optional[AuxFiles] = None,
        ckpt_dir: Optional[str] = None,
        torch_dtype: Optional[torch.dtype] = None,
        device: Optional[Union[str, torch.device]] = None,
        allow_missing_unet_keys: bool = False,
        num_head_channels: int = 64,
    ) -> "Hi3DPipeline":
        """Load `first_stage.pt` / `second_stage.pt` (DeepSpeed dict) or an sgm-layout stage checkpoint.

        Auxiliary weights come from the stage file where it holds them, else from `aux` / `ckpt_dir` (the reference's
        ckpts/ layout). `torch_dtype` casts the UNet and the image encoders; the VAEs stay float32."""
        sd = load_stage_checkpoint(os.fspath(path))
        detected = detect_stage(sd)
        if stage is not None and stage != detected:
            raise ValueError(f"{os.fspath(path)} is a Hi3D {detected} checkpoint, not {stage}")
        spec = stage_spec(detected, num_head_channels)
        aux = aux or AuxFiles.from_dir(ckpt_dir or os.path.dirname(os.path.abspath(os.fspath(path))))
        report = Hi3DLoadReport()
        unet = build_stage_unet(sd, spec, report, allow_missing_unet_keys)
        vae, first = build_stage_vaes(sd, spec, report)
        image_encoder = build_open_clip_image_encoder(sd, spec, report, aux.open_clip)
        extra: Dict[str, list] = {}
        aesthetic = depth = None
        if detected == "stage1":
            i = spec.extra["aesthetic_index"]
            aesthetic = AestheticScorer.from_files(sd, aux.clip_l, aux.aesthetic_mlp, i)
            extra["aesthetic"] = [k for k in sd if k.startswith(f"conditioner.embedders.{i}.aesthetic_model.visual.")
                                  or k.startswith(f"conditioner.embedders.{i}.aesthetic_mlp.")]
        else:
            i = spec.extra["depth_index"]
            dpt = load_midas_dpt_hybrid(aux.midas, sd, i)
            depth = DepthConditioner(dpt, spec.extra["depth_shuffle"], spec.extra["depth_scale_factor"])
            extra["depth"] = [f"conditioner.embedders.{i}.model.model." + k
                              for k in strip_prefix(sd, f"conditioner.embedders.{i}.model.model.")]
        report = finish_report(sd, report, extra)
        pipe = cls(unet, vae, image_encoder, spec, report, first, aesthetic, depth)
        if device is not None or torch_dtype is not None:
            pipe.to(device, torch_dtype)
        return pipe

    def to(self, *args, **kwargs) -> "Hi3DPipeline":
        """As SV3DPipeline.to; a dtype also casts the aesthetic CLIP tower and the depth model (the LAION MLP and
        the VAEs stay float32)."""
        device = next((a for a in args if a is not None and not isinstance(a, torch.dtype)), kwargs.get("device"))
        dtype = next((a for a in args if isinstance(a, torch.dtype)), kwargs.get("dtype"))
        super().to(*args, **kwargs)
        kw = {"device": device} if dtype is None else {"device": device, "dtype": dtype}
        if self.aesthetic is not None:
            self.aesthetic.clip.to(**kw)
            self.aesthetic.mlp.to(device=device)
        if self.depth is not None:
            self.depth.to(**kw)
        if self.first_stage is not None and device is not None:
            self.first_stage.to(device=device)
        return self

    # ------------------------------------------------------------------ memory plan
    def enable_attention_slicing(self, slice_size: Optional[int] = 1) -> None:
        """Sliced spatial self-attention (diffusers' SlicedAttnProcessor: `slice_size` frame-heads at a time): the
        score matrix of 128² latents (16384² per frame and head) is never held for all frames at once. Only the
        spatial attention layers are sliced: temporal attention runs over 16 frames with h*w batch entries, where
        slicing would only add loops. None restores the default processors."""
        from diffusers.models.attention_processor import AttnProcessor2_0, SlicedAttnProcessor

        procs = {}
        for name in self.unet.attn_processors:
            spatial = ".transformer_blocks." in name and ".temporal_transformer_blocks." not in name
            procs[name] = SlicedAttnProcessor(slice_size) if (slice_size and spatial) else AttnProcessor2_0()
        self.unet.set_attn_processor(procs)

    # ------------------------------------------------------------------ encoders
    @torch.no_grad()
    def encode_condition_latents(self, frames: torch.Tensor, chunk: Optional[int] = None) -> torch.Tensor:
        """(N, 3, H, W) in [-1, 1] -> (N, 4, H/8, W/8) conditioner latents (mode, unscaled), `chunk` frames at a time."""
        step = frames.shape[0] if not chunk else max(1, int(chunk))
        return torch.cat([self.encode_condition_latent(frames[i : i + step]) for i in range(0, frames.shape[0], step)])

    @torch.no_grad()
    def encode_first_stage(self, frames: torch.Tensor, generator: Optional[torch.Generator] = None,
                           chunk: Optional[int] = 1) -> torch.Tensor:
        """(N, 3, H, W) in [-1, 1] -> (N, 4, H/8, W/8) scaled first-stage latents, *sampled* from the posterior as
        the reference's `encode_first_stage` (its regulariser samples), one frame at a time by default."""
        vae = self.first_stage if self.first_stage is not None else self.vae
        step = frames.shape[0] if not chunk else max(1, int(chunk))
        out = []
        for i in range(0, frames.shape[0], step):
            dist = vae.encode(frames[i : i + step].to(self.device, torch.float32)).latent_dist
            eps = torch.randn(dist.mean.shape, generator=generator).to(self.device)
            out.append(dist.mean + dist.std * eps)
        return torch.cat(out) * self.spec.scale_factor
