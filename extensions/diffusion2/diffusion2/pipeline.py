"""Diffusion2Pipeline: references (SV3D_p orbit, SVD-xt video or the input video), line conditions, the joint
sampler and decoding, on two `sv3d.SV3DPipeline`s."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import numpy as np
import torch
from PIL import Image
from sv3d import SV3DPipeline, edm_sigmas

from .conditions import multiview_conditions, video_conditions
from .config import Diffusion2Config
from .distributed import DistContext
from .inputs import Diffusion2Input
from .joint import JointSampler, ScaleSchedule
from .plan import PlanEstimate, estimate_plan
from .weights import video_view_weights


@dataclass
class Diffusion2Result:
    """latents (V, F, 4, h, w) scaled; orbit (V, 3, S, S) and video (F, 3, S, S) references in [-1, 1]."""

    latents: torch.Tensor
    orbit: torch.Tensor
    video: torch.Tensor
    plan: Optional[PlanEstimate] = None


def _pil(image: torch.Tensor) -> Image.Image:
    """(1, 3, S, S) in [-1, 1] (made from 8-bit pixels) -> the same PIL image."""
    arr = ((image[0].permute(1, 2, 0).cpu().numpy() + 1.0) / 2.0 * 255.0).round().clip(0, 255).astype(np.uint8)
    return Image.fromarray(arr)


class Diffusion2Pipeline:
    """`mv` is SV3D_p (orbits: the columns of the matrix), `vid` is SVD-xt (videos: its rows)."""

    def __init__(self, mv: SV3DPipeline, vid: SV3DPipeline):
        if mv.spec.family != "sv3d_p":
            raise ValueError(f"the multiview model must be sv3d_p (cameras per view), got {mv.spec.version}")
        if vid.spec.family != "svd":
            raise ValueError(f"the video model must be SVD(-xt), got {vid.spec.version}")
        self.mv, self.vid = mv, vid

    @classmethod
    def from_single_files(cls, sv3d_path: str, svd_path: str, device=None, torch_dtype: Optional[torch.dtype] = None) -> "Diffusion2Pipeline":
        for flag, path, name in (("--sv3d", sv3d_path, "sv3d_p.safetensors"), ("--svd", svd_path, "svd_xt.safetensors")):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{flag} checkpoint {path!r} does not exist: download {name} (Stability AI) and pass its path")
        mv = SV3DPipeline.from_single_file(sv3d_path, version="sv3d_p", torch_dtype=torch_dtype, device=device)
        vid = SV3DPipeline.from_single_file(svd_path, version="svd_xt", torch_dtype=torch_dtype, device=device)
        return cls(mv, vid)

    @property
    def device(self) -> torch.device:
        return self.mv.device

    # ------------------------------------------------------------------ references
    @torch.no_grad()
    def reference_orbit(self, inp: Diffusion2Input, cfg: Diffusion2Config) -> torch.Tensor:
        """(V, 3, S, S) in [-1, 1]: SV3D_p's orbit of the condition image; its last view is the image itself."""
        out = self.mv(_pil(inp.condition), num_frames=cfg.num_views, num_steps=cfg.num_steps,
                      elevations_deg=cfg.elevations(), azimuths_deg=cfg.azimuths(), cond_aug=cfg.sv3d_cond_aug,
                      seed=cfg.seed, decoding_t=cfg.decoding_t, min_scale=cfg.sv3d_min_scale,
                      max_scale=cfg.sv3d_max_scale, preprocess=False, last_azimuth_full_turn=cfg.last_azimuth_full_turn)
        return out.frames * 2.0 - 1.0

    @torch.no_grad()
    def reference_video(self, inp: Diffusion2Input, cfg: Diffusion2Config) -> torch.Tensor:
        """(F, 3, S, S) in [-1, 1]: the input video, or SVD-xt's video of the image."""
        if inp.is_video:
            return inp.video.clone()
        out = self.vid(_pil(inp.condition), num_frames=cfg.num_frames, num_steps=cfg.num_steps,
                       cond_aug=cfg.svd_cond_aug, seed=cfg.seed + 1, decoding_t=cfg.decoding_t, fps_id=cfg.fps_id,
                       motion_bucket_id=cfg.motion_bucket_id, min_scale=cfg.svd_min_scale,
                       max_scale=cfg.svd_max_scale, preprocess=False)
        return out.frames * 2.0 - 1.0

    def references(self, inp: Diffusion2Input, cfg: Diffusion2Config, ctx: DistContext) -> Tuple[torch.Tensor, torch.Tensor]:
        """Both references; under torchrun rank 0 samples the orbit and rank 1 the video at the same time, then
        they are broadcast."""
        size, num_frames = cfg.image_size, (inp.video.shape[0] if inp.is_video else cfg.num_frames)
        video_rank = 1 if ctx.world_size > 1 else 0
        orbit = torch.zeros(cfg.num_views, 3, size, size, device=self.device)
        video = torch.zeros(num_frames, 3, size, size, device=self.device)
        if ctx.rank == 0:
            orbit = self.reference_orbit(inp, cfg).to(self.device)
        if ctx.rank == video_rank:
            video = self.reference_video(inp, cfg).to(self.device)
        ctx.broadcast(orbit, 0)
        ctx.broadcast(video, video_rank)
        return orbit, video

    # ------------------------------------------------------------------ joint sampling
    def make_sampler(self, orbit: torch.Tensor, video: torch.Tensor, cfg: Diffusion2Config, ctx: DistContext) -> JointSampler:
        """Conditions of this rank's columns and rows, and the sampler."""
        num_views, num_frames = orbit.shape[0], video.shape[0]
        cols, rows = ctx.share(num_frames), ctx.share(num_views)
        mv_cond = multiview_conditions(
            self.mv, video[cols.start : cols.stop], cols, cfg.elevations(), cfg.azimuths(), cfg.seed,
            cfg.sv3d_cond_aug, cfg.sv3d_min_scale, cfg.sv3d_max_scale, cfg.last_azimuth_full_turn, cfg.chunk)
        vid_cond = video_conditions(
            self.vid, orbit[rows.start : rows.stop], rows, num_frames, cfg.seed, cfg.svd_cond_aug, cfg.fps_id,
            cfg.motion_bucket_id, cfg.svd_min_scale, cfg.svd_max_scale, cfg.chunk)
        schedule = ScaleSchedule(cfg.scale_schedule, cfg.sv3d_scale, cfg.sv3d_scale_min, cfg.sv3d_scale_max, cfg.scale_k)
        return JointSampler(self.mv, self.vid, mv_cond, vid_cond, video_view_weights(cfg.azimuths()), schedule,
                            cfg.vrs_steps, cfg.chunk, ctx)

    def latent_shape(self, num_views: int, num_frames: int, size: int) -> Tuple[int, ...]:
        f = 2 ** (len(self.vid.vae.config.block_out_channels) - 1)
        return (num_views, num_frames, int(self.vid.vae.config.latent_channels), size // f, size // f)

    def sigmas(self, num_steps: int) -> torch.Tensor:
        s = self.mv.spec
        return edm_sigmas(num_steps, s.sigma_min, s.sigma_max, s.rho)

    @torch.no_grad()
    def __call__(
        self,
        inp: Diffusion2Input,
        cfg: Optional[Diffusion2Config] = None,
        ctx: Optional[DistContext] = None,
        progress: bool = True,
        log: Callable[[str], None] = print,
    ) -> Diffusion2Result:
        cfg = dataclasses.replace(cfg or Diffusion2Config())
        ctx = ctx or DistContext()
        if inp.is_video:
            cfg.num_frames = inp.video.shape[0]
        cfg.validate()
        orbit, video = self.references(inp, cfg, ctx)
        sampler = self.make_sampler(orbit, video, cfg, ctx)
        shape = self.latent_shape(cfg.num_views, cfg.num_frames, orbit.shape[-1])
        plan = estimate_plan(sampler, shape, cfg.num_steps)
        if ctx.is_main:
            log(plan.format())
        gen = torch.Generator().manual_seed(int(cfg.seed) + 2)
        noise = torch.randn(shape, generator=gen).to(self.device)
        bar = None
        if progress and ctx.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=sampler.evaluations(cfg.num_steps) * sampler.calls_per_evaluation(), unit="chunk",
                       desc="Diffusion² joint sampling (steps x chunks)")
            sampler.progress = bar.update
        try:
            latents = sampler.sample(noise, self.sigmas(cfg.num_steps), gen)
        finally:
            if bar is not None:
                bar.close()
        return Diffusion2Result(latents=latents, orbit=orbit, video=video, plan=plan)

    @torch.no_grad()
    def decode_view(self, latents: torch.Tensor, decoding_t: int = 10) -> torch.Tensor:
        """One view's (F, 4, h, w) latents -> (F, 3, H, W) in [0, 1] with SVD-xt's temporal decoder,
        `decoding_t` frames per call (the reference decodes with SVD-xt's first stage too)."""
        return ((self.vid.decode_latents(latents, decoding_t) + 1.0) / 2.0).clamp(0.0, 1.0)
