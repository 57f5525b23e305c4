"""`sv3d-guidance`: score distillation with SV3D on the 21-view orbit around the object.

SDS in EDM form (generative-models' v-prediction EDM denoiser): the rendered orbit is encoded to scaled latents z (VAE encoder, gradient through
it), noised to x = z + σ·ε with one σ per step (log-uniform in [sigma_min, sigma_max], both schedulable), and
denoised by the frozen SV3D denoiser D with classifier-free guidance at SV3D's per-frame triangle scale. The
SDS gradient ∝ (z - D(x; σ)) is applied as an x0-reconstruction loss

    loss_sds = 0.5 · Σ_frames w(σ) · ||z - sg(D(x; σ))||² / N            (N = number of frames)

with w = 1 ("uniform"), 1/σ ("sds": the ε-space SDS gradient (ε̂ - ε) = (z - D)/σ) or (σ² + 1)/σ² ("edm": the
EDM training weight of a v-prediction denoiser with σ_data = 1). The conditioning image's CLIP embedding and its
(unscaled, noise-augmented) VAE latent are computed once; CFG's unconditional branch zeroes both, as SV3D does.

The frozen pipeline (UNet, VAE, CLIP image encoder) sits in a `FrozenPrior`: out of the module tree (neither
trained, nor moved by Lightning, nor written to checkpoints), loaded on first use or by `load_prior()` (so
`--test`/`--export` never read the checkpoint); fp16 on CUDA (`half_precision_weights`), fp32 on CPU.
Memory plan options (`grad_frames`, `vae_chunk_size`, `vae_checkpoint_chunks`, `vae_gradient_checkpointing`,
`cfg_batched`, rendering below `image_size`) and their measured/estimated memory: sv3d_memory.py's docstring.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

import threestudio
from threestudio.models.guidance.frozen_prior import FrozenPrior
from threestudio.models.guidance.sv3d_memory import encode_frames, sample_grad_frames
from threestudio.utils.base import BaseModule
from threestudio.utils.config import ConfigError
from threestudio.utils.schedule import C, validate_schedule

logger = logging.getLogger(__name__)

WEIGHTINGS = ("uniform", "sds", "edm")


@threestudio.register("sv3d-guidance")
class SV3DGuidance(BaseModule):
    @dataclass
    class Config(BaseModule.Config):
        # local sv3d_u / sv3d_p checkpoint in generative-models layout; never downloaded
        pretrained_model_name_or_path: str = "???"
        original_config: Optional[str] = None  # sgm YAML; default: the one shipped for the version
        version: Optional[str] = None  # sv3d_u | sv3d_p; default: recognised from the checkpoint
        half_precision_weights: bool = True  # fp16 on CUDA (CPU always runs fp32)
        # the input image (RGBA; preprocessed as SV3D's sampling script: crop, centre, 576, on white)
        cond_image_path: str = "???"
        image_frame_ratio: Optional[float] = None
        cond_aug: float = 1e-5
        cond_seed: int = 0  # seed of the conditioning image's noise augmentation
        # elevation of the input view; orbit frames default to it (sv3d_p takes per-frame values in forward)
        cond_elevation_deg: float = 10.0
        num_frames: int = 21
        # renders are resized to image_size before VAE encoding; latents are image_size / 8
        image_size: int = 576
        guidance_scale: float = 2.5  # triangle peak (half way round the orbit)
        min_guidance_scale: float = 1.0  # triangle ends (frames next to the input view)
        sigma_min: Any = 0.14  # ~ DDPM t = 20 of 1000 in SD's schedule
        sigma_max: Any = 13.0  # ~ DDPM t = 980
        weighting: str = "uniform"
        # clamp (z - D) elementwise to [-grad_clip, grad_clip] (schedulable); null: no clamp
        grad_clip: Any = None
        # ---- memory plan (sv3d_memory.py)
        grad_frames: int = 0  # K > 0: K random frames carry gradient, scaled by N/K; 0: all frames
        vae_chunk_size: int = 0  # frames per encoder call (0: all in one call)
        vae_checkpoint_chunks: bool = True  # recompute each chunk in backward (needs vae_chunk_size > 0)
        vae_gradient_checkpointing: bool = False  # diffusers' block-level checkpointing inside the encoder
        cfg_batched: bool = True  # False: conditional and unconditional UNet passes one after another

    cfg: Config

    def configure(self, pipeline: Any = None) -> None:
        """Checks the options; reads nothing. `pipeline`: an SV3DPipeline to use instead of the checkpoint."""
        c = self.cfg
        if c.weighting not in WEIGHTINGS:
            raise ConfigError(f"guidance.weighting must be one of {WEIGHTINGS}, got '{c.weighting}'.")
        if c.image_size % 8 != 0 or c.image_size <= 0:
            raise ConfigError(f"guidance.image_size must be a positive multiple of 8 (VAE factor), got {c.image_size}.")
        if c.grad_frames < 0 or c.vae_chunk_size < 0:
            raise ConfigError("guidance.grad_frames and guidance.vae_chunk_size must be >= 0.")
        for key in ("sigma_min", "sigma_max") + (("grad_clip",) if getattr(c, "grad_clip", None) is not None else ()):
            validate_schedule(getattr(c, key), f"system.guidance.{key}")
        self._pipeline_given = pipeline is not None
        self.prior: FrozenPrior = FrozenPrior(
            lambda device: self._prepare_pipeline(pipeline if pipeline is not None else self._load_pipeline(), device),
            name="SV3D pipeline")
        half = c.half_precision_weights and self.prior.device.type == "cuda"
        self.weights_dtype = torch.float16 if half else torch.float32
        self._condition: Optional[dict[str, Tensor]] = None
        self.sigma_min = self.sigma_max = 0.0
        self.grad_clip_value: Optional[float] = None
        self.do_update_step(0, 0)

    def _prepare_pipeline(self, pipeline: Any, device: torch.device) -> Any:
        c = self.cfg
        if pipeline.spec.family not in ("sv3d_u", "sv3d_p"):
            raise ConfigError(
                f"guidance.pretrained_model_name_or_path: {c.pretrained_model_name_or_path} is a {pipeline.spec.version} "
                "(video) checkpoint; sv3d-guidance needs an SV3D orbit model (sv3d_u or sv3d_p)."
            )
        half = self.weights_dtype == torch.float16
        # (casting only when needed: diffusers warns on every dtype cast)
        pipeline.to(device, self.weights_dtype if half else None)
        # the encoder runs on renders every step: fp16 too on CUDA (the conditioning latent and sampled orbits
        # are made in fp32, as SV3D does; see `_vae_fp32`)
        if half:
            pipeline.vae.to(device, self.weights_dtype)
        if c.vae_gradient_checkpointing:
            pipeline.vae.enable_gradient_checkpointing()
        return pipeline

    def _checkpoint_path(self) -> str:
        path = self.cfg.pretrained_model_name_or_path
        if not os.path.isfile(path):
            raise ConfigError(
                f"system.guidance.pretrained_model_name_or_path: checkpoint '{path}' does not exist. Download "
                "sv3d_u.safetensors or sv3d_p.safetensors (stabilityai/sv3d) yourself and give its local path; "
                "nothing is downloaded here.")
        return path

    def check_training_inputs(self) -> None:
        """The checkpoint and the conditioning image exist (launch.py asks before a training run does any work;
        the prior itself loads lazily when training starts)."""
        if not self._pipeline_given:
            self._checkpoint_path()
        image = self.cfg.cond_image_path
        if isinstance(image, str) and not os.path.isfile(image):
            raise ConfigError(f"system.guidance.cond_image_path: image '{image}' does not exist.")

    def _load_pipeline(self) -> Any:
        from sv3d import SV3DPipeline

        c = self.cfg
        path = self._checkpoint_path()
        try:
            return SV3DPipeline.from_single_file(path, original_config=c.original_config, version=c.version)
        except (ValueError, KeyError, FileNotFoundError) as e:
            raise ConfigError(f"guidance.pretrained_model_name_or_path: could not load '{path}': {e}") from None

    def load_prior(self) -> None:
        """Load the pipeline and encode the input image now (systems call this when training starts)."""
        self._conditioning()

    @property
    def pipe(self) -> Any:
        return self.prior.get()

    @property
    def spec(self) -> Any:
        return self.pipe.spec

    def _conditioning(self) -> dict[str, Tensor]:
        if self._condition is None:
            self.prepare_condition(self.cfg.cond_image_path)
        assert self._condition is not None
        return self._condition

    @property
    def cond_image(self) -> Tensor:
        """(1, 3, S, S) preprocessed input image in [-1, 1] at image_size."""
        return self._conditioning()["image"]

    @property
    def context(self) -> Tensor:
        """(1, 1, D) CLIP image embedding of the input."""
        return self._conditioning()["context"]

    @property
    def cond_latent(self) -> Tensor:
        """(1, 4, h, w) unscaled VAE latent of the noise-augmented input."""
        return self._conditioning()["latent"]

    @property
    def scales(self) -> Tensor:
        """(N,) SV3D's per-frame CFG scales (the triangle)."""
        return self._conditioning()["scales"]

    @contextlib.contextmanager
    def _vae_fp32(self) -> Iterator[None]:
        """Run the VAE in fp32 inside the block (the sv3d pipeline feeds it fp32 tensors)."""
        vae = self.pipe.vae
        dtype = vae.dtype
        if dtype == torch.float32:
            yield
            return
        vae.float()
        try:
            yield
        finally:
            vae.to(dtype)

    # ------------------------------------------------------------------ conditioning
    @torch.no_grad()
    def prepare_condition(self, image: Any) -> None:
        """Cache the CLIP embedding and the unscaled, noise-augmented VAE latent of the input image (path or PIL)."""
        from sv3d import image_to_tensor, preprocess_orbit_image

        if isinstance(image, str) and not os.path.isfile(image):
            raise ConfigError(f"guidance.cond_image_path: image '{image}' does not exist.")
        try:
            pil = preprocess_orbit_image(image, self.cfg.image_frame_ratio, 576)
        except ValueError as e:
            raise ConfigError(f"guidance.cond_image_path: {e}") from None
        x = image_to_tensor(pil).to(self.prior.device)
        cond_image = self._resize(x)  # (1, 3, S, S) in [-1, 1]
        gen = torch.Generator().manual_seed(self.cfg.cond_seed)
        noise = torch.randn(cond_image.shape, generator=gen).to(self.prior.device)
        # CLIP sees the 576² image, as in SV3D's sampling; the concatenated latent must match the render latents
        context = self.pipe.encode_image(x).float()  # (1, 1, D)
        with self._vae_fp32():
            latent = self.pipe.encode_condition_latent(cond_image + self.cfg.cond_aug * noise)
        c = self.cfg
        scales = self.pipe.guidance_scales(c.num_frames, c.min_guidance_scale, c.guidance_scale).to(self.prior.device)
        self._condition = {"image": cond_image, "context": context, "latent": latent.float(), "scales": scales}

    def _resize(self, x: Tensor) -> Tensor:
        size = self.cfg.image_size
        if x.shape[-2:] == (size, size):
            return x
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                             antialias=x.shape[-1] > size)

    def camera_ids(self, elevation: Optional[Tensor], azimuth: Optional[Tensor]) -> Tensor:
        """(1, N, K) added time ids; sv3d_p uses per-frame polar = 90° - elevation and azimuth relative to the input."""
        from sv3d import orbit_azimuths_deg, sv3d_p_camera_ids

        n = self.cfg.num_frames
        polars = azimuths = None
        if self.spec.family == "sv3d_u" and azimuth is not None and not getattr(self, "_warned_u", False):
            standard = torch.as_tensor(orbit_azimuths_deg(n), dtype=torch.float32)
            off = torch.remainder(azimuth.detach().float().cpu().reshape(-1) - standard + 180.0, 360.0) - 180.0
            if off.abs().max() > 1e-3:
                self._warned_u = True
                logger.warning("sv3d_u knows only its fixed orbit (frame i at (i + 1)·360/%d° from the input view); "
                               "the rendered orbit's azimuths differ by up to %.1f°: use sv3d_p for other cameras.",
                               n, float(off.abs().max()))
        if self.spec.family == "sv3d_p":
            elev = [self.cfg.cond_elevation_deg] * n if elevation is None else [float(e) for e in elevation.reshape(-1)]
            az = list(orbit_azimuths_deg(n)) if azimuth is None else [float(a) for a in azimuth.reshape(-1)]
            cams = sv3d_p_camera_ids(elev, az, n)
            polars, azimuths = cams[:, 0], cams[:, 1]
        return self.pipe.added_time_ids(n, self.cfg.cond_aug, 1, polars, azimuths).to(self.prior.device)

    # ------------------------------------------------------------------ denoising
    def encode(self, images: Tensor) -> Tensor:
        """(N, 3, S, S) in [-1, 1] -> (N, 4, S/8, S/8) scaled latents (distribution mean), fp32."""
        vae = self.pipe.vae
        return vae.encode(images.to(vae.dtype)).latent_dist.mode().float() * self.spec.scale_factor

    @torch.no_grad()
    def denoise(self, x: Tensor, sigma: Tensor, ids: Tensor) -> Tensor:
        """CFG denoised latents D(x; σ) for one orbit x (1, N, 4, h, w) with SV3D's per-frame triangle scales."""
        n = x.shape[1]
        concat = self.cond_latent[:, None].expand(-1, n, -1, -1, -1)
        context = self.context
        if self.cfg.cfg_batched:
            d = self.pipe.denoise(torch.cat([x, x]), torch.cat([sigma, sigma]),
                                  torch.cat([torch.zeros_like(concat), concat]),
                                  torch.cat([torch.zeros_like(context), context]), torch.cat([ids, ids]))
            uncond, cond = d.float().chunk(2)
        else:
            uncond = self.pipe.denoise(x, sigma, torch.zeros_like(concat), torch.zeros_like(context), ids).float()
            cond = self.pipe.denoise(x, sigma, concat, context, ids).float()
        scales = self.scales.to(cond).view(1, -1, 1, 1, 1)
        return uncond + scales * (cond - uncond)

    def sample_sigma(self) -> float:
        """One σ per step, log-uniform in [sigma_min, sigma_max] (global RNG, so a resumed run draws the same)."""
        lo, hi = math.log(self.sigma_min), math.log(self.sigma_max)
        return math.exp(lo + (hi - lo) * float(torch.rand(())))

    def weight(self, sigma: float) -> float:
        if self.cfg.weighting == "sds":
            return 1.0 / sigma
        if self.cfg.weighting == "edm":
            return (sigma ** 2 + 1.0) / sigma ** 2
        return 1.0

    def sample_grad_frames(self) -> Optional[Tensor]:
        """The frames that carry gradient this step (None: all), drawn from the global RNG per the config."""
        return sample_grad_frames(self.cfg.num_frames, self.cfg.grad_frames)

    def forward(self, rgb: Tensor, elevation: Optional[Tensor] = None, azimuth: Optional[Tensor] = None,
                grad_frames: Optional[Tensor] = None, sigma: Optional[float] = None,
                noise: Optional[Tensor] = None, **kwargs: Any) -> dict[str, Tensor]:
        """SDS loss of one rendered orbit.

        rgb (N, H, W, 3) in [0, 1]: the N = num_frames orbit views in SV3D order (frame i at azimuth
        (i + 1)·360/N relative to the input view, the last frame is the input view); elevation/azimuth (N,) in
        degrees (azimuth relative to the input view) are used by sv3d_p only. grad_frames: the frames that carry
        gradient (None: all); their gradient is scaled by N/K. sigma / noise override the random draws (tests).
        """
        n = self.cfg.num_frames
        if rgb.dim() != 4 or rgb.shape[0] != n or rgb.shape[-1] != 3:
            raise ValueError(f"sv3d-guidance expects the {n} orbit renders as (N={n}, H, W, 3), got {tuple(rgb.shape)}.")
        images = self._resize(rgb.permute(0, 3, 1, 2).to(self.prior.device) * 2.0 - 1.0)
        z = encode_frames(self.encode, images, grad_frames, self.cfg.vae_chunk_size, self.cfg.vae_checkpoint_chunks)
        sigma_value = self.sample_sigma() if sigma is None else float(sigma)
        eps = torch.randn_like(z) if noise is None else noise.to(z).reshape(z.shape)
        sigma_t = torch.full((1,), sigma_value, device=z.device)
        ids = self.camera_ids(elevation, azimuth)
        denoised = self.denoise((z.detach() + sigma_value * eps)[None], sigma_t, ids)[0]

        w = self.weight(sigma_value)
        diff = z.detach() - denoised
        if self.grad_clip_value is not None:
            diff = diff.clamp(-self.grad_clip_value, self.grad_clip_value)
        target = (z.detach() - diff).detach()
        per_frame = 0.5 * w * ((z - target) ** 2).flatten(1).sum(dim=1)  # (N,)
        loss = per_frame.sum() / n
        if grad_frames is not None and z.requires_grad:
            k = len(grad_frames)
            # the value is the full loss; the gradient is the K frames' scaled by N/K (unbiased over the choice)
            sub = per_frame[grad_frames.to(per_frame.device)].sum() * (n / k) / n
            loss = loss.detach() + (sub - sub.detach())
        return {
            "loss_sds": loss,
            "grad_norm": (w * diff).norm(),
            "sigma": torch.tensor(sigma_value),
        }

    # ------------------------------------------------------------------ reference orbit (SV3D paper's 3D recipe)
    @torch.no_grad()
    def sample_orbit(self, num_steps: int = 50, seed: int = 23, elevation_deg: Optional[float] = None) -> Tensor:
        """Sample one orbit with SV3D from the input image: (N, 3, S, S) in [0, 1] at image_size, last frame = input."""
        from PIL import Image

        img = ((self.cond_image[0].permute(1, 2, 0).float().cpu() + 1.0) * 127.5).round().clamp(0, 255)
        pil = Image.fromarray(img.to(torch.uint8).numpy())
        elev = self.cfg.cond_elevation_deg if elevation_deg is None else elevation_deg
        with self._vae_fp32():
            out = self.pipe(pil, num_frames=self.cfg.num_frames, num_steps=num_steps, elevations_deg=elev,
                            cond_aug=self.cfg.cond_aug, seed=seed, min_scale=self.cfg.min_guidance_scale,
                            max_scale=self.cfg.guidance_scale, preprocess=False)
        return out.frames

    # ------------------------------------------------------------------ schedules
    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        self.sigma_min = float(C(self.cfg.sigma_min, epoch, global_step))
        self.sigma_max = float(C(self.cfg.sigma_max, epoch, global_step))
        if not 0 < self.sigma_min <= self.sigma_max:
            raise ConfigError(
                f"guidance.sigma_min ({self.sigma_min}) and guidance.sigma_max ({self.sigma_max}) must satisfy "
                f"0 < sigma_min <= sigma_max at step {global_step}."
            )
        clip = self.cfg.grad_clip
        self.grad_clip_value = None if clip is None else float(C(clip, epoch, global_step))
