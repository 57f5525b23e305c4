"""Conditions of the matrix's lines: SV3D_p per frame column (reference-video frame t, the orbit's cameras) and
SVD-xt per view row (orbit view v, fps / motion ids), as the reference's `get_condition`.

Each line's condition image gets its own `cond_aug` noise from a generator seeded by (seed, model, line), so a
line's condition does not depend on which rank builds it or on the world size.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from sv3d import SV3DPipeline, sv3d_p_camera_ids

from .joint import LineConditions

_MV_STREAM, _VID_STREAM = 1_000_003, 2_000_003  # offsets of the per-line noise seeds


def line_noise(seed: int, stream: int, line: int, shape: Sequence[int]) -> torch.Tensor:
    """Unit Gaussian noise of one line's condition image (CPU, float32)."""
    gen = torch.Generator().manual_seed(int(seed) * 7919 + stream + int(line))
    return torch.randn(tuple(shape), generator=gen)


@torch.no_grad()
def _encode_lines(pipe: SV3DPipeline, images: torch.Tensor, cond_aug: float, seed: int, stream: int,
                  index: range, chunk: int, noise: Optional[torch.Tensor] = None):
    """CLIP embeddings (N, 1, D) of the clean images and VAE latents (N, 4, h, w) of the cond_aug-noised ones."""
    contexts, latents = [], []
    for a in range(0, len(index), max(1, chunk)):
        b = min(a + max(1, chunk), len(index))
        img = images[a:b].to(pipe.device, torch.float32)
        if noise is None:
            eps = torch.stack([line_noise(seed, stream, index[k], img.shape[1:]) for k in range(a, b)])
        else:
            eps = noise[a:b]
        contexts.append(pipe.encode_image(img))
        latents.append(pipe.encode_condition_latent(img + cond_aug * eps.to(img)))
    return torch.cat(contexts), torch.cat(latents)


def multiview_conditions(
    pipe: SV3DPipeline,
    video: torch.Tensor,
    index: range,
    elevations_deg: Sequence[float],
    azimuths_deg: Sequence[float],
    seed: int,
    cond_aug: float = 1e-5,
    min_scale: float = 2.5,
    max_scale: float = 2.5,
    last_azimuth_full_turn: bool = True,
    chunk: int = 4,
    noise: Optional[torch.Tensor] = None,
) -> LineConditions:
    """SV3D_p conditions of the frame columns `index`: video (len(index), 3, S, S) in [-1, 1] are their
    reference-video frames. Diffusion² guides SV3D_p with a constant 2.5 (its triangle guider has min = max)."""
    num_views = len(azimuths_deg)
    context, concat = _encode_lines(pipe, video, cond_aug, seed, _MV_STREAM, index, chunk, noise)
    cams = sv3d_p_camera_ids(list(elevations_deg), list(azimuths_deg), num_views, last_azimuth_full_turn)
    ids = pipe.added_time_ids(num_views, cond_aug, len(index), cams[:, 0], cams[:, 1])
    scales = pipe.guidance_scales(num_views, min_scale, max_scale).to(pipe.device)
    return LineConditions(index, context, concat, ids, scales)


def video_conditions(
    pipe: SV3DPipeline,
    orbit: torch.Tensor,
    index: range,
    num_frames: int,
    seed: int,
    cond_aug: float = 0.02,
    fps_id: float = 24,
    motion_bucket_id: float = 127,
    min_scale: float = 1.5,
    max_scale: float = 3.0,
    chunk: int = 4,
    noise: Optional[torch.Tensor] = None,
) -> LineConditions:
    """SVD-xt conditions of the view rows `index`: orbit (len(index), 3, S, S) in [-1, 1] are their reference
    views; per-frame CFG linspace(min_scale, max_scale) over the F frames."""
    context, concat = _encode_lines(pipe, orbit, cond_aug, seed, _VID_STREAM, index, chunk, noise)
    ids = pipe.added_time_ids(num_frames, cond_aug, len(index), fps_id=fps_id, motion_bucket_id=motion_bucket_id)
    scales = pipe.guidance_scales(num_frames, min_scale, max_scale).to(pipe.device)
    return LineConditions(index, context, concat, ids, scales)
