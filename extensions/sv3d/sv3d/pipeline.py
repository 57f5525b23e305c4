"""SV3DPipeline: SV3D / SVD image-to-video sampling on diffusers modules loaded from the original checkpoints."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput
from PIL import Image

from .cameras import orbit_azimuths_deg, sv3d_p_camera_ids
from .checkpoint import load_checkpoint
from .config import VERSIONS, ModelSpec, detect_version, family_of_version, shipped_config_path, spec_from_config
from .loading import LoadReport, build_components
from .preprocess import clip_preprocess, image_to_tensor, open_image, preprocess_orbit_image, preprocess_video_image
from .sampling import (
    apply_guidance,
    edm_denoise,
    edm_sigmas,
    euler_sample,
    linear_guidance_scales,
    triangle_guidance_scales,
)


@dataclass
class SV3DOutput(BaseOutput):
    """frames (T, 3, H, W) in [0, 1]; latents (T, 4, h, w); cameras: per-frame elevation/azimuth in degrees
    (azimuth relative to the input view, which is the last frame) for the SV3D versions."""

    frames: torch.Tensor
    latents: torch.Tensor
    input_image: Image.Image
    elevations_deg: Optional[List[float]] = None
    azimuths_deg: Optional[List[float]] = None


class SV3DPipeline(DiffusionPipeline):
    """UNet (SV3DUNet), VAE (AutoencoderKL or AutoencoderKLTemporalDecoder), image encoder
    (CLIPVisionModelWithProjection) and the sampling recipe of one SV3D/SVD version.

    A diffusers `DiffusionPipeline`: `components`, `enable_model_cpu_offload()`, progress bars and
    `__call__(..., return_dict=False)` behave as in diffusers' own pipelines.
    """

    model_cpu_offload_seq = "image_encoder->unet->vae"

    # (spec has a default only so that diffusers counts it as an option, not as a model component)
    def __init__(self, unet, vae, image_encoder, spec: Optional[ModelSpec] = None,
                 load_report: Optional[LoadReport] = None):
        if spec is None:
            raise ValueError("SV3DPipeline needs the version's ModelSpec (use SV3DPipeline.from_single_file)")
        super().__init__()
        self.register_modules(unet=unet.eval(), vae=vae.eval(), image_encoder=image_encoder.eval())
        # the version's recipe (sizes, schedule, guider): plain attributes, not pipeline components
        self.spec = spec
        self.load_report = load_report

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_single_file(
        cls,
        path: Union[str, os.PathLike],
        original_config: Optional[Union[str, os.PathLike, dict]] = None,
        version: Optional[str] = None,
        torch_dtype: Optional[torch.dtype] = None,
        device: Optional[Union[str, torch.device]] = None,
    ) -> "SV3DPipeline":
        """Load sv3d_u / sv3d_p / svd / svd_xt (and *_image_decoder) checkpoints in generative-models layout.

        The version is recognised from the keys and shapes (svd vs svd_xt from the file name, or `version`);
        module sizes come from the sgm YAML (`original_config`, else the shipped one) and the tensor shapes.
        `torch_dtype` applies to the UNet and the image encoder; the VAE stays in float32 as in the original.
        """
        sd = load_checkpoint(os.fspath(path))
        detected = detect_version(sd, os.fspath(path))
        if version is not None and version not in VERSIONS:
            raise ValueError(f"unknown version {version!r}; known: {', '.join(VERSIONS)}")
        if original_config is not None:
            spec = spec_from_config(original_config, version)
        else:
            spec = spec_from_config(shipped_config_path(version or detected), version or detected)
        if spec.family != family_of_version(detected):
            raise ValueError(
                f"{os.fspath(path)}: the checkpoint is a {detected} model but the config describes {spec.version} "
                f"({spec.family}); pass the matching original_config or version"
            )
        unet, vae, image_encoder, report = build_components(sd, spec)
        pipe = cls(unet, vae, image_encoder, spec, report)
        if device is not None or torch_dtype is not None:
            pipe.to(device, torch_dtype)
        return pipe

    def to(self, *args, **kwargs) -> "SV3DPipeline":
        """Move to a device; a dtype casts the UNet and the image encoder (the VAE stays float32, as in the
        original). Accepts diffusers' forms: to(device), to(dtype), to(device, dtype), keywords."""
        device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
        kwargs.pop("silence_dtype_warnings", None)
        for arg in args:
            if isinstance(arg, torch.dtype):
                dtype = arg
            elif arg is not None:
                device = arg
        kw = {"device": device} if dtype is None else {"device": device, "dtype": dtype}
        self.unet.to(**kw)
        self.image_encoder.to(**kw)
        if device is not None:
            self.vae.to(device=device)
        return self

    @property
    def device(self) -> torch.device:
        """Where inputs go: the execution device under model CPU offload, else the UNet's device."""
        hook = getattr(self.unet, "_hf_hook", None)
        if getattr(hook, "execution_device", None) is not None:
            return torch.device(hook.execution_device)
        return next(self.unet.parameters()).device

    # ------------------------------------------------------------------ conditioning
    @torch.no_grad()
    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, 1, D) CLIP image embedding (the cross-attention context)."""
        enc = self.image_encoder
        pixels = clip_preprocess(image.to(self.device, torch.float32), enc.config.image_size)
        return enc(pixel_values=pixels.to(enc.dtype)).image_embeds[:, None, :]

    def encode_condition_latent(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, 4, H/8, W/8) VAE latent (distribution mode, *not* scaled), as the
        conditioner makes the concatenated conditioning latents."""
        return self.vae.encode(image.to(self.device, torch.float32)).latent_dist.mode()

    def added_time_ids(
        self,
        num_frames: int,
        cond_aug: float,
        batch_size: int = 1,
        polars_rad: Optional[Sequence[float]] = None,
        azimuths_rad: Optional[Sequence[float]] = None,
        fps_id: float = 6,
        motion_bucket_id: float = 127,
        elevations_deg: Optional[Sequence[float]] = None,
    ) -> torch.Tensor:
        """(B, T, K) raw per-frame ids in config order (sv3d_p: cond_aug, polar, azimuth; svd_mv: cond_aug,
        elevation in degrees)."""
        per_key: Dict[str, torch.Tensor] = {
            "cond_aug": torch.full((num_frames,), float(cond_aug)),
            "fps_id": torch.full((num_frames,), float(fps_id)),
            "motion_bucket_id": torch.full((num_frames,), float(motion_bucket_id)),
        }
        if polars_rad is not None:
            per_key["polars_rad"] = torch.as_tensor(polars_rad, dtype=torch.float32).reshape(num_frames)
        if azimuths_rad is not None:
            per_key["azimuths_rad"] = torch.as_tensor(azimuths_rad, dtype=torch.float32).reshape(num_frames)
        if elevations_deg is not None:
            per_key["elevation_deg"] = torch.as_tensor(elevations_deg, dtype=torch.float32).reshape(num_frames)
        missing = [k for k in self.spec.vector_keys if k not in per_key]
        if missing:
            raise ValueError(f"{self.spec.version} needs per-frame {missing} (e.g. from sv3d.cameras.sv3d_p_camera_ids)")
        ids = torch.stack([per_key[k] for k in self.spec.vector_keys], dim=-1)
        return ids[None].expand(batch_size, -1, -1).to(self.device)

    def guidance_scales(self, num_frames: int, min_scale: Optional[float] = None, max_scale: Optional[float] = None) -> torch.Tensor:
        """(T,) per-frame CFG scale: triangle for SV3D, linear for SVD (the version's guider)."""
        lo = self.spec.min_scale if min_scale is None else min_scale
        hi = self.spec.max_scale if max_scale is None else max_scale
        if self.spec.guider == "linear":
            return linear_guidance_scales(num_frames, lo, hi)
        return triangle_guidance_scales(num_frames, lo, hi)

    # ------------------------------------------------------------------ denoising / decoding
    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, concat: torch.Tensor, context: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """D(x; sigma) for (B, T, 4, h, w) latents; concat (B, 4, h, w) or (B, T, 4, h, w)."""
        if concat.dim() == 4:
            concat = concat[:, None].expand(-1, x.shape[1], -1, -1, -1)
        return edm_denoise(self.unet, x, sigma, concat, context, ids)

    def guided_denoise(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        concat: torch.Tensor,
        context: torch.Tensor,
        ids: torch.Tensor,
        scales: torch.Tensor,
    ) -> torch.Tensor:
        """Classifier-free-guided D(x; sigma) of B videos in one UNet batch of 2B (unconditional half first, with
        the CLIP embedding and the condition latents zeroed, as the original guider). x (B, T, 4, h, w); sigma (B,);
        concat (B, 4, h, w) or (B, T, 4, h, w); context (B, 1, D); ids (B, T, K); scales (T,) per-frame CFG."""
        if concat.dim() == 4:
            concat = concat[:, None].expand(-1, x.shape[1], -1, -1, -1)
        concat2 = torch.cat([torch.zeros_like(concat), concat])
        context2 = torch.cat([torch.zeros_like(context), context])
        d = edm_denoise(self.unet, torch.cat([x, x]), torch.cat([sigma, sigma]), concat2, context2, torch.cat([ids, ids]))
        uncond, cond = d.chunk(2)
        return apply_guidance(uncond, cond, scales)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, decoding_t: int = 14) -> torch.Tensor:
        """(T, 4, h, w) scaled latents -> (T, 3, H, W) in [-1, 1], `decoding_t` frames at a time."""
        z = latents.to(self.device, torch.float32) / self.spec.scale_factor
        outs = []
        for i in range(0, z.shape[0], max(1, int(decoding_t))):
            chunk = z[i : i + max(1, int(decoding_t))]
            if self.spec.first_stage == "temporal":
                outs.append(self.vae.decode(chunk, num_frames=chunk.shape[0]).sample)
            else:
                outs.append(self.vae.decode(chunk).sample)
        return torch.cat(outs)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample_latents(
        self,
        concat: torch.Tensor,
        context: torch.Tensor,
        ids: torch.Tensor,
        scales: torch.Tensor,
        num_steps: int,
        generator: torch.Generator,
        callback=None,
        pre_step=None,
        noise: Optional[torch.Tensor] = None,
        cfg_batch: bool = True,
        end_step: Optional[int] = None,
    ) -> torch.Tensor:
        """Guided Euler-EDM sampling -> (1, T, 4, h, w) latents.

        concat (1, C', h, w) repeated over the T = len(scales) frames, or (1, T, C', h, w) per frame; context
        (1, 1, D); ids (1, T, K) or (1, K). The unconditional branch zeroes concat and context and keeps the ids.
        `noise` (1, T, 4, h, w) unit Gaussian (default: drawn from `generator`); `pre_step` as in
        `euler_sample`; `cfg_batch=False` runs the two branches one after the other (half the activations);
        `end_step` stops after that many steps (returns the partially denoised state).
        """
        num_frames = int(scales.shape[0])
        h, w = concat.shape[-2:]
        if noise is None:
            noise = torch.randn((1, num_frames, 4, h, w), generator=generator)
        noise = noise.to(self.device)
        concat_t = concat[:, None].expand(-1, num_frames, -1, -1, -1) if concat.dim() == 4 else concat

        def guided(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            if cfg_batch:
                return self.guided_denoise(x, sigma, concat_t, context, ids, scales)
            uncond = edm_denoise(self.unet, x, sigma, torch.zeros_like(concat_t), torch.zeros_like(context), ids)
            cond = edm_denoise(self.unet, x, sigma, concat_t, context, ids)
            return apply_guidance(uncond, cond, scales)

        sigmas = edm_sigmas(num_steps, self.spec.sigma_min, self.spec.sigma_max, self.spec.rho).to(self.device)
        return euler_sample(guided, noise, sigmas, callback, pre_step=pre_step, end_step=end_step)

    def prepare_image(self, image: Union[str, os.PathLike, Image.Image], image_frame_ratio: Optional[float] = None, size: int = 576) -> Image.Image:
        if self.spec.family == "svd":
            return preprocess_video_image(image)
        return preprocess_orbit_image(image, image_frame_ratio, size)

    @torch.no_grad()
    def __call__(
        self,
        image: Union[str, os.PathLike, Image.Image],
        num_frames: Optional[int] = None,
        num_steps: Optional[int] = None,
        elevations_deg: Union[float, Sequence[float]] = 10.0,
        azimuths_deg: Optional[Sequence[float]] = None,
        cond_aug: Optional[float] = None,
        seed: int = 23,
        decoding_t: int = 14,
        fps_id: float = 6,
        motion_bucket_id: float = 127,
        min_scale: Optional[float] = None,
        max_scale: Optional[float] = None,
        image_frame_ratio: Optional[float] = None,
        image_size: int = 576,
        preprocess: bool = True,
        callback=None,
        return_dict: bool = True,
        last_azimuth_full_turn: bool = False,
    ) -> Union[SV3DOutput, tuple]:
        """One image -> one video (SVD) or one 21-view orbit (SV3D: the last frame is the input view; SVD-MV: the
        first frame is at the input view).

        `callback(step, latents, denoised)` runs after every Euler step. return_dict=False returns the tuple
        (frames, latents) instead of an `SV3DOutput`. `last_azimuth_full_turn` (sv3d_p): the input view's azimuth
        id is 2*pi instead of 0, as Diffusion² samples its reference orbit."""
        spec = self.spec
        sv3d = spec.family != "svd"
        num_frames = spec.num_frames if num_frames is None else int(num_frames)
        num_steps = spec.num_steps if num_steps is None else int(num_steps)
        cond_aug = spec.cond_aug if cond_aug is None else float(cond_aug)
        pil = self.prepare_image(image, image_frame_ratio, image_size) if preprocess else _as_pil(image)
        x_img = image_to_tensor(pil).to(self.device)
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        # same order of random draws as the reference: conditioning-image noise, then the latent noise
        noisy = x_img + cond_aug * torch.randn(x_img.shape, generator=gen).to(self.device)
        context = self.encode_image(x_img)
        concat = self.encode_condition_latent(noisy)
        elevs = azs = None
        polars = azims = None
        if sv3d:
            elevs = [float(e) for e in np.broadcast_to(np.asarray(elevations_deg, dtype=np.float64), (num_frames,))]
        if spec.family == "svd_mv":
            # SVD-MV's orbit starts at the input view: frame i at i * 360 / T degrees
            azs = [float(a) for a in np.linspace(0, 360, num_frames + 1)[:-1]] if azimuths_deg is None else [float(a) for a in azimuths_deg]
        elif sv3d:
            az = orbit_azimuths_deg(num_frames) if azimuths_deg is None else np.asarray(azimuths_deg, dtype=np.float64)
            cams = sv3d_p_camera_ids(elevs, az, num_frames, last_azimuth_full_turn)
            azs = [float(np.degrees(a)) for a in cams[:-1, 1]] + [0.0]  # the last frame is the input view
            if spec.family == "sv3d_p":
                polars, azims = cams[:, 0], cams[:, 1]
        ids = self.added_time_ids(num_frames, cond_aug, 1, polars, azims, fps_id, motion_bucket_id,
                                  elevs if spec.family == "svd_mv" else None)
        scales = self.guidance_scales(num_frames, min_scale, max_scale).to(self.device)
        latents = self.sample_latents(concat, context, ids, scales, num_steps, gen, callback=callback)[0]
        frames = self.decode_latents(latents, decoding_t)
        if sv3d and spec.family != "svd_mv":  # SV3D orbits end on the input view; SVD-MV keeps its frame 0
            frames[-1:] = x_img.to(frames.dtype)
        frames = ((frames + 1.0) / 2.0).clamp(0.0, 1.0)
        self.maybe_free_model_hooks()  # after model CPU offload, as diffusers' pipelines do
        if not return_dict:
            return frames.cpu(), latents.cpu()
        return SV3DOutput(frames=frames.cpu(), latents=latents.cpu(), input_image=pil, elevations_deg=elevs, azimuths_deg=azs)


def _as_pil(image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    return open_image(image).convert("RGB")

