"""Memory plan pieces of the SV3D guidance: which orbit frames carry gradient, and VAE encoding with less memory.

A 21-frame SV3D SDS step keeps, for backpropagation, the activations of the VAE encoder of every frame that
carries gradient (about 2.3 GB per 576² frame in fp32, 1.2 GB in fp16: see README_SV3D.md in this folder for
the measured table). Three options cut this down; they combine:

- `grad_frames = K`: only K random frames of the orbit carry gradient; the other frames are rendered and encoded
  without autograd (the UNet still sees all 21 frames, which it needs). The K frames' gradient is scaled by N/K so
  that its expectation over the random choice equals the full gradient. Memory ∝ K.
- `vae_chunk_size = C` (with `vae_checkpoint_chunks`): the frames with gradient are encoded C at a time inside
  `torch.utils.checkpoint`, so only each chunk's input is kept and the encoder is re-run per chunk in backward.
  Memory ∝ C (peak during one chunk's recomputation), compute +1 encoder forward.
- `vae_gradient_checkpointing`: diffusers' own block-level checkpointing of the encoder (`enable_gradient_checkpointing`).
  Keeps block boundaries only; works with or without chunks.
- Rendering at a lower resolution than `image_size` (the data module's `orbit_height/width`): the renders are
  upsampled before encoding, so the renderer's own memory (rays × samples) shrinks with the square of the ratio.
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
