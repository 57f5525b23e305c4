"""Memory plan of the SV3D guidance: which orbit frames carry gradient, and VAE encoding with less memory.

Options (config keys of `sv3d-guidance`, plus the data module's orbit render size); they combine:
- `grad_frames = K`: only K random frames of the 21 carry gradient; the others are rendered and encoded without
  autograd (the UNet still sees all 21 frames, which it needs). The K frames' gradient is scaled by N/K, so its
  expectation over the random choice is the full gradient. Renderer and VAE memory ∝ K.
- `vae_chunk_size = C` with `vae_checkpoint_chunks`: the gradient frames are encoded C at a time inside
  `torch.utils.checkpoint`; between forward and backward only the chunk inputs are kept, and backward re-runs
  the encoder one chunk at a time. VAE memory ∝ C; compute +1 encoder forward.
- `vae_gradient_checkpointing`: diffusers' block-level checkpointing of the encoder; alone or with chunks.
- `cfg_batched: false`: the unconditional and conditional UNet passes run one after the other (halves the
  UNet's transient activations, same result).
- Rendering below `image_size` (data.orbit_height/width): renders are upsampled before encoding; renderer
  memory ∝ render pixels. A lower `image_size` (e.g. 256 -> 32² latents) shrinks VAE and UNet memory ∝ pixels,
  but leaves SV3D's training resolution (576²).

Measured figures (benchmarks/bench_sds_sv3d.py; "meta" = counted on the meta device, exact, no compute):
- VAE encoder (full size), activations kept for backward per 576² frame: 4.06 GB fp32 / 2.15 GB fp16 (meta).
  Every GroupNorm -> SiLU -> conv keeps three full-size tensors. With diffusers block checkpointing 0.27 / 0.14 GB
  are kept, and re-running its largest block in backward needs 2.06 / 1.03 GB per frame (meta).
  (An earlier estimate of ~0.4-0.5 GB per 576² frame was lower than this measurement.)
- Renderer (configs/sv3d-image-to-3d.yaml geometry: 16-level hash grid, analytic normals, fp32): 1.6 KB kept
  per ray sample; 81 samples per ray on the initial density blob seen from distance 2 (CPU) -> 2.1 GB per
  128² frame with gradient. The occupancy grid lowers the sample count as training empties space.
- UNet, CFG batch (2 × 21 frames), no grad: 0.15 GB of live activations at 8² latents in fp32 (CPU).
- Weights in fp16 on CUDA: UNet 3.05 GB, CLIP ViT-H 1.26 GB, VAE 0.17 GB (4.5 GB); CPU fp32: 8.9 GB RSS.

Estimated for 21 frames at 576² (72² latents), fp16 prior, orbit rendered at 128² (from the figures above; UNet
activations scaled ∝ latent pixels: 0.15 GB × 81 / 2 (fp16) ≈ 5.9 GB, 3 GB with cfg_batched false). The UNet runs
in forward without grad and the VAE recompute in backward, so peak ≈ weights + renderer + max(VAE, UNet):

  plan                                             VAE GB   renderer GB   peak GB (est.)
  all 21 frames with grad, no checkpointing          45         44            ~95
  grad_frames 8                                      17.2       16.8          ~39
  grad_frames 8, vae_chunk_size 4 (the config)        8.6       16.8          ~30
  grad_frames 8, chunk 4, vae_gradient_checkpointing  4.7       16.8          ~28
  all 21 frames, chunk 4                              8.6       44            ~57
  all 21 frames, chunk 4, orbit rendered at 64²       8.6       11            ~24
  grad_frames 8, chunk 4, render 64²                  8.6        4.2          ~17
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint


def sample_grad_frames(num_frames: int, k: int, device: Optional[torch.device] = None) -> Optional[Tensor]:
    """Sorted indices of `k` distinct random frames out of `num_frames` (global RNG), or None for all frames."""
    if k <= 0 or k >= num_frames:
        return None
    return torch.randperm(num_frames)[:k].sort().values.to(device or "cpu")


def encode_frames(encode: Callable[[Tensor], Tensor], images: Tensor, grad_frames: Optional[Tensor],
                  chunk_size: int = 0, checkpoint_chunks: bool = True) -> Tensor:
    """Encode (N, 3, H, W) images frame-wise with `encode`, autograd only through `grad_frames`.

    grad_frames None: every frame keeps its graph if `images` requires grad. Frames outside `grad_frames` are
    encoded under `torch.no_grad()`. Gradient frames are encoded `chunk_size` at a time (0: all at once), each
    chunk under activation checkpointing when `checkpoint_chunks` is set. Returns (N, C, h, w) in frame order.
    """
    n = images.shape[0]
    track = images.requires_grad and torch.is_grad_enabled()
    if not track:
        grad_idx: list[int] = []
    elif grad_frames is None:
        grad_idx = list(range(n))
    else:
        grad_idx = sorted({int(i) for i in grad_frames.tolist()})
        if grad_idx and (grad_idx[0] < 0 or grad_idx[-1] >= n):
            raise ValueError(f"grad_frames {grad_idx} must index the {n} frames of the orbit.")
    plain_idx = [i for i in range(n) if i not in set(grad_idx)]
    step = chunk_size if chunk_size > 0 else max(len(grad_idx), len(plain_idx), 1)

    latents: dict[int, Tensor] = {}
    with torch.no_grad():
        for start in range(0, len(plain_idx), step):
            idx = plain_idx[start:start + step]
            for i, z in zip(idx, encode(images[idx].detach())):
                latents[i] = z
    for start in range(0, len(grad_idx), step):
        idx = grad_idx[start:start + step]
        chunk = images[idx]
        if checkpoint_chunks and chunk_size > 0:
            out = checkpoint(encode, chunk, use_reentrant=False)
        else:
            out = encode(chunk)
        for i, z in zip(idx, out):
            latents[i] = z
    return torch.stack([latents[i] for i in range(n)])


def saved_tensor_bytes(fn: Callable[[], Tensor]) -> tuple[Tensor, int]:
    """Run `fn` and count the bytes autograd keeps for its backward (distinct storages); works on `meta` tensors,
    so the figure for a full-size model costs no compute. Returns (output, bytes)."""
    seen: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        try:
            key = t.untyped_storage().data_ptr() if t.device.type != "meta" else id(t)
            size = t.untyped_storage().nbytes() if t.device.type != "meta" else t.numel() * t.element_size()
        except (RuntimeError, NotImplementedError):
            key, size = id(t), t.numel() * t.element_size()
        seen[key] = max(seen.get(key, 0), size)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(seen.values())
