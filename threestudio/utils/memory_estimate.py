"""Peak GPU memory of a distillation run, estimated from measured per-unit figures (no model is built).

Figures (bytes), from `threestudio/models/guidance/sv3d_memory.py`'s measurements (benchmarks/bench_sds_sv3d.py;
"meta" = counted exactly on the meta device, full-size modules):
- Renderer, pure-PyTorch path (16-level hash grid, analytic normals, fp32): 1.6 KB kept per ray sample, 81 samples
  per ray on the initial density blob -> RENDER_BYTES_PER_RAY = 2.1 GB / 128² rays. The occupancy grid lowers the
  sample count as training empties space, and tinycudann's fused grid keeps less: an upper bound.
- SD/SVD VAE encoder, activations kept for backward per 576² frame: 4.06 GB fp32 / 2.15 GB fp16 (meta); with
  diffusers block checkpointing 0.27 / 0.14 GB kept plus 2.06 / 1.03 GB to re-run the largest block. Scaled
  ∝ pixels for other sizes (the encoder is convolutional). MVDream's VAE is SD 2.1's, the same architecture.
- SV3D UNet, CFG batch of 2 × 21 frames, no grad: 0.15 GB live activations at 8² latents fp32 (CPU), scaled
  ∝ latent pixels and frames; half with fp16 and half again with `cfg_batched: false`. MVDream's UNet (SD 2.1 widths,
  no temporal layers) is estimated with the same per-frame-pixel figure.
- Weights on CUDA in fp16: SV3D UNet 3.05 GB + CLIP ViT-H 1.26 GB + VAE 0.17 GB; MVDream UNet 867 M parameters
  (1.73 GB) + VAE 0.17 GB (the text encoder is freed after the prompt embeddings are cached).

peak ≈ prior weights + renderer (rays with gradient) + max(VAE kept for backward, UNet transient): the UNet runs
without grad, the VAE is recomputed (or its kept activations released) before the renderer's backward.
Full-size figures on a GPU should replace these where they differ (benchmarks/bench_sds_*.py print them).
"""
from __future__ import annotations

from typing import Any, Mapping

GB = 1e9
RENDER_BYTES_PER_RAY = 2.1 * GB / (128 * 128)
VAE_KEPT_PER_PIXEL = {32: 4.06 * GB / 576 ** 2, 16: 2.15 * GB / 576 ** 2}
VAE_CKPT_KEPT_PER_PIXEL = {32: (0.27 + 2.06) * GB / 576 ** 2, 16: (0.14 + 1.03) * GB / 576 ** 2}
UNET_BYTES_PER_FRAME_LATENT_PIXEL = 0.15 * GB / (2 * 21 * 8 * 8)  # fp32, CFG batch counted in the frames
WEIGHT_BYTES_FP16 = {"sv3d": (3.05 + 1.26 + 0.17) * GB, "mvdream": (1.73 + 0.17) * GB}


def _phases(*values: Any) -> list[tuple]:
    """Per-phase tuples of values that are each a per-phase list (`[8, 4]`) or one value for every phase."""
    lists = [list(v) if isinstance(v, (list, tuple)) else None for v in values]
    n = max([len(v) for v in lists if v is not None] or [1])
    return [tuple(v[min(i, len(v) - 1)] if v is not None else values[j] for j, v in enumerate(lists))
            for i in range(n)]


def _get(cfg: Mapping, dotted: str, default: Any = None) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def family_of(system_type: str) -> str | None:
    """`mvdream` / `sv3d` for the distillation systems with a memory model, else None."""
    return {"mvdream-system": "mvdream", "sv3d-system": "sv3d"}.get(system_type)


def estimate_peak_bytes(cfg: Mapping) -> dict[str, float]:
    """Breakdown {weights, renderer, vae, unet, peak} in bytes for a resolved experiment config (dict-like:
    `data`, `system`, `system_type`) of an MVDream or SV3D run on CUDA. ValueError for other systems."""
    family = family_of(str(cfg.get("system_type", "")))
    if family is None:
        raise ValueError(f"no memory model for system_type '{cfg.get('system_type')}' (mvdream-system, sv3d-system)")
    g = _get(cfg, "system.guidance", {}) or {}
    half = bool(g.get("half_precision_weights", True))
    bits = 16 if half else 32
    weights = WEIGHT_BYTES_FP16[family] * (1 if half else 2)
    if family == "mvdream":
        phases = _phases(_get(cfg, "data.batch_size", 4), _get(cfg, "data.height", 256), _get(cfg, "data.width", 256))
        image = int(g.get("image_size", 256))
        checkpointed = bool(g.get("gradient_checkpointing", False)) or bool(
            _get(cfg, "system.use_recompute", False))
        per_pixel = (VAE_CKPT_KEPT_PER_PIXEL if checkpointed else VAE_KEPT_PER_PIXEL)[bits]
        best: dict[str, float] = {}
        for batch, h, w in phases:  # the heaviest phase sets the peak
            renderer = batch * h * w * RENDER_BYTES_PER_RAY
            vae = batch * image * image * per_pixel
            unet = UNET_BYTES_PER_FRAME_LATENT_PIXEL * 2 * batch * (image // 8) ** 2 * (bits / 32)
            parts = {"weights": weights, "renderer": renderer, "vae": vae, "unet": unet,
                     "peak": weights + renderer + max(vae, unet)}
            if not best or parts["peak"] > best["peak"]:
                best = parts
        return best
    frames = int(g.get("num_frames", 21))
    k = int(g.get("grad_frames", 0))
    grad_frames = frames if k <= 0 or k >= frames else k
    image = int(g.get("image_size", 576))
    chunk = int(g.get("vae_chunk_size", 0))
    kept_frames = chunk if chunk > 0 and g.get("vae_checkpoint_chunks", True) else grad_frames
    kept_frames = min(kept_frames, grad_frames)
    per_pixel = (VAE_CKPT_KEPT_PER_PIXEL if g.get("vae_gradient_checkpointing", False) else VAE_KEPT_PER_PIXEL)[bits]
    vae = kept_frames * image * image * per_pixel
    orbit_rays = grad_frames * int(_get(cfg, "data.orbit_height", 128)) * int(_get(cfg, "data.orbit_width", 128))
    ref_rays = int(_get(cfg, "data.height", 128)) * int(_get(cfg, "data.width", 128))
    renderer = (orbit_rays + ref_rays) * RENDER_BYTES_PER_RAY
    cfg_factor = 2 if g.get("cfg_batched", True) else 1
    unet = UNET_BYTES_PER_FRAME_LATENT_PIXEL * cfg_factor * frames * (image // 8) ** 2 * (bits / 32)
    return {"weights": weights, "renderer": renderer, "vae": vae, "unet": unet,
            "peak": weights + renderer + max(vae, unet)}


def format_breakdown(parts: Mapping[str, float]) -> str:
    return ", ".join(f"{k} {v / GB:.1f} GB" for k, v in parts.items())
