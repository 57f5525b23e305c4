"""Real-ESRGAN second-order degradations of Hi3D's stage-2 training clips, written here because basicsr (which the
reference uses) pulls torchvision.

Per clip, as the reference (vtdm/degraded_images.py with configs/train_realesrnet_x4plus.yml): blur (a random
kernel per frame) -> random resize -> Gaussian or Poisson noise -> JPEG, then a second blur (p 0.8) -> resize ->
noise -> {resize to 1/4 + sinc filter, JPEG} in random order -> clamp/round -> resize back to the full size; the
background (mask 0) is reset to white and frame 0 is the clean condition image. Resize kinds and noise kinds are
drawn once per clip, kernels and JPEG qualities per frame. JPEG is real JPEG (Pillow, 4:2:0) instead of basicsr's
differentiable DiffJPEG: the degradations are data, no gradient flows through them.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


@dataclass
class DegradationOptions:
    """configs/train_realesrnet_x4plus.yml of the reference."""

    scale: int = 4
    resize_prob: Tuple[float, float, float] = (0.2, 0.7, 0.1)  # up, down, keep
    resize_range: Tuple[float, float] = (0.15, 1.5)
    gaussian_noise_prob: float = 0.5
    noise_range: Tuple[float, float] = (1, 30)
    poisson_scale_range: Tuple[float, float] = (0.05, 3)
    gray_noise_prob: float = 0.4
    jpeg_range: Tuple[float, float] = (30, 95)
    second_blur_prob: float = 0.8
    resize_prob2: Tuple[float, float, float] = (0.3, 0.4, 0.3)
    resize_range2: Tuple[float, float] = (0.3, 1.2)
    gaussian_noise_prob2: float = 0.5
    noise_range2: Tuple[float, float] = (1, 25)
    poisson_scale_range2: Tuple[float, float] = (0.05, 2.5)
    gray_noise_prob2: float = 0.4
    jpeg_range2: Tuple[float, float] = (30, 95)
    kernel_list: Tuple[str, ...] = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
    kernel_prob: Tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    sinc_prob: float = 0.1
    blur_sigma: Tuple[float, float] = (0.2, 3.0)
    sinc_prob2: float = 0.1
    blur_sigma2: Tuple[float, float] = (0.2, 1.5)
    betag_range: Tuple[float, float] = (0.5, 4.0)
    betap_range: Tuple[float, float] = (1.0, 2.0)
    final_sinc_prob: float = 0.8
    kernel_sizes: Tuple[int, ...] = tuple(2 * v + 1 for v in range(3, 11))  # 7 .. 21
    pad_to: int = 21


def _u(g: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> float:
    return float(lo + (hi - lo) * torch.rand((), generator=g))


def _choice(g: torch.Generator, items: Sequence, probs: Optional[Sequence[float]] = None):
    p = torch.ones(len(items)) if probs is None else torch.tensor(probs, dtype=torch.float32)
    return items[int(torch.multinomial(p, 1, generator=g))]


def _grid(size: int) -> torch.Tensor:
    r = torch.arange(size, dtype=torch.float64) - size // 2
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    return torch.stack([xx, yy], dim=-1)  # (size, size, 2)


def anisotropic_kernel(size: int, sigma_x: float, sigma_y: float, theta: float, kind: str = "gaussian",
                       beta: float = 1.0) -> torch.Tensor:
    """(size, size) normalised kernel: gaussian exp(-q/2), generalized exp(-q^beta / 2) (q = x^T S^-1 x),
    plateau 1 / (1 + q^beta)."""
    rot = torch.tensor([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]], dtype=torch.float64)
    cov = rot @ torch.diag(torch.tensor([sigma_x ** 2, sigma_y ** 2], dtype=torch.float64)) @ rot.T
    xy = _grid(size)
    q = torch.einsum("...i,ij,...j->...", xy, torch.linalg.inv(cov), xy)
    if kind == "gaussian":
        k = torch.exp(-0.5 * q)
    elif kind == "generalized":
        k = torch.exp(-0.5 * q.pow(beta))
    elif kind == "plateau":
        k = 1.0 / (1.0 + q.pow(beta))
    else:
        raise ValueError(f"unknown kernel kind {kind!r}")
    return (k / k.sum()).float()


def sinc_kernel(size: int, omega_c: float, pad_to: int = 0) -> torch.Tensor:
    """Circular low-pass (2-D sinc) kernel with cutoff omega_c, normalised, zero-padded to `pad_to`."""
    from scipy.special import j1

    xy = _grid(size).numpy()
    r = np.sqrt((xy ** 2).sum(-1))
    with np.errstate(divide="ignore", invalid="ignore"):
        k = omega_c * j1(omega_c * r) / (2 * np.pi * r)
    k[size // 2, size // 2] = omega_c ** 2 / (4 * np.pi)
    k = torch.from_numpy(k / k.sum()).float()
    if pad_to > size:
        p = (pad_to - size) // 2
        k = F.pad(k, (p, p, p, p))
    return k


def random_kernel(g: torch.Generator, o: DegradationOptions, second: bool = False) -> torch.Tensor:
    """(pad_to, pad_to) blur kernel of the first (or second) degradation."""
    size = int(_choice(g, o.kernel_sizes))
    if _u(g) < (o.sinc_prob2 if second else o.sinc_prob):
        omega = _u(g, math.pi / 3, math.pi) if size < 13 else _u(g, math.pi / 5, math.pi)
        k = sinc_kernel(size, omega)
    else:
        lo, hi = o.blur_sigma2 if second else o.blur_sigma
        kind = _choice(g, o.kernel_list, o.kernel_prob)
        sx = _u(g, lo, hi)
        iso = kind.endswith("iso") and not kind.endswith("aniso")
        sy, theta = (sx, 0.0) if iso else (_u(g, lo, hi), _u(g, -math.pi, math.pi))
        if kind.startswith("generalized"):
            k = anisotropic_kernel(size, sx, sy, theta, "generalized", _u(g, *o.betag_range))
        elif kind.startswith("plateau"):
            k = anisotropic_kernel(size, sx, sy, theta, "plateau", _u(g, *o.betap_range))
        else:
            k = anisotropic_kernel(size, sx, sy, theta, "gaussian")
    p = (o.pad_to - size) // 2
    return F.pad(k, (p, p, p, p))


def filter2d(x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """x (T, C, H, W), kernels (T, k, k): each frame with its own kernel, reflect padding."""
    t, c, h, w = x.shape
    k = kernels.shape[-1]
    xp = F.pad(x, (k // 2,) * 4, mode="reflect").reshape(1, t * c, h + k - 1, w + k - 1)
    weight = kernels.to(x.dtype)[:, None].repeat_interleave(c, dim=0)
    return F.conv2d(xp, weight, groups=t * c).reshape(t, c, h, w)


def _resize(x: torch.Tensor, size: Tuple[int, int], mode: str) -> torch.Tensor:
    size = (max(1, int(size[0])), max(1, int(size[1])))
    kw = {} if mode == "area" else {"align_corners": False}
    return F.interpolate(x, size=size, mode=mode, **kw)


def _noise(x: torch.Tensor, g: torch.Generator, gaussian_prob: float, sigma_range, poisson_range, gray_prob) -> torch.Tensor:
    """Gaussian (sigma/255) or Poisson noise, colour or gray, per frame; clipped to [0, 1]."""
    t = x.shape[0]
    gray = torch.rand(t, generator=g) < gray_prob
    if _u(g) < gaussian_prob:
        sigma = (sigma_range[0] + torch.rand(t, generator=g) * (sigma_range[1] - sigma_range[0])) / 255.0
        n = torch.randn(x.shape, generator=g)
        n = torch.where(gray.view(-1, 1, 1, 1), n[:, :1].expand_as(n), n)
        out = x + n * sigma.view(-1, 1, 1, 1)
    else:
        scale = poisson_range[0] + torch.rand(t, generator=g) * (poisson_range[1] - poisson_range[0])
        img = (x.clamp(0, 1) * 255).round() / 255
        lum = (0.299 * img[:, :1] + 0.587 * img[:, 1:2] + 0.114 * img[:, 2:3]).expand_as(img)
        src = torch.where(gray.view(-1, 1, 1, 1), lum, img)
        vals = torch.tensor([2 ** math.ceil(math.log2(len(torch.unique((src[i] * 255).round())) or 1)) for i in range(t)],
                            dtype=x.dtype).view(-1, 1, 1, 1)
        noisy = torch.poisson(src * vals, generator=g) / vals
        out = x + (noisy - src) * scale.view(-1, 1, 1, 1)
    return out.clamp(0, 1)


def jpeg(x: torch.Tensor, qualities: Sequence[float]) -> torch.Tensor:
    """Real JPEG round trip of each frame (T, 3, H, W) in [0, 1] at the given qualities."""
    out = []
    for frame, q in zip(x, qualities):
        arr = (frame.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0).round().astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=int(q))
        dec = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), dtype=np.float32) / 255.0
        out.append(torch.from_numpy(dec).permute(2, 0, 1))
    return torch.stack(out).to(x.device, x.dtype)


def _random_resize(x, g, probs, rng, size=None):
    kind = _choice(g, ("up", "down", "keep"), probs)
    scale = _u(g, 1, rng[1]) if kind == "up" else (_u(g, rng[0], 1) if kind == "down" else 1.0)
    mode = _choice(g, ("area", "bilinear", "bicubic"))
    h, w = x.shape[-2:] if size is None else size
    return _resize(x, (h * scale, w * scale), mode)


@torch.no_grad()
def degrade_clip(frames: torch.Tensor, masks: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None,
                 options: Optional[DegradationOptions] = None) -> torch.Tensor:
    """frames (T, 3, H, W) in [-1, 1]; masks (T, H, W) (object > 0) or None -> degraded (T, 3, H, W) in [-1, 1],
    frame 0 returned clean (the condition image)."""
    o = options or DegradationOptions()
    g = generator or torch.Generator().manual_seed(0)
    t, _, h, w = frames.shape
    x = (frames.float().cpu() / 2.0 + 0.5).clamp(0, 1)
    k1 = torch.stack([random_kernel(g, o) for _ in range(t)])
    k2 = torch.stack([random_kernel(g, o, second=True) for _ in range(t)])
    if _u(g) < o.final_sinc_prob:
        size = int(_choice(g, o.kernel_sizes))
        sinc = sinc_kernel(size, _u(g, math.pi / 3, math.pi), pad_to=o.pad_to)[None].expand(t, -1, -1)
    else:
        sinc = F.pad(torch.ones(1, 1), (o.pad_to // 2,) * 4)[None].expand(t, -1, -1)  # a pulse: no filtering
    # first degradation
    out = _random_resize(filter2d(x, k1), g, o.resize_prob, o.resize_range)
    out = _noise(out, g, o.gaussian_noise_prob, o.noise_range, o.poisson_scale_range, o.gray_noise_prob)
    out = jpeg(out, [_u(g, *o.jpeg_range) for _ in range(t)])
    # second degradation
    if _u(g) < o.second_blur_prob:
        out = filter2d(out, k2)
    out = _random_resize(out, g, o.resize_prob2, o.resize_range2, size=(h / o.scale, w / o.scale))
    out = _noise(out, g, o.gaussian_noise_prob2, o.noise_range2, o.poisson_scale_range2, o.gray_noise_prob2)
    small = (h // o.scale, w // o.scale)
    if _u(g) < 0.5:
        out = filter2d(_resize(out, small, _choice(g, ("area", "bilinear", "bicubic"))), sinc)
        out = jpeg(out, [_u(g, *o.jpeg_range2) for _ in range(t)])
    else:
        out = jpeg(out, [_u(g, *o.jpeg_range2) for _ in range(t)])
        out = filter2d(_resize(out, small, _choice(g, ("area", "bilinear", "bicubic"))), sinc)
    out = (out * 255.0).round().clamp(0, 255) / 255.0
    out = _resize(out, (h, w), _choice(g, ("area", "bilinear", "bicubic")))
    if masks is not None:
        out = torch.where(masks.cpu()[:, None] > 0, out, torch.ones_like(out))
    out = out * 2.0 - 1.0
    out[0] = frames[0].float().cpu()
    return out.to(frames.device, frames.dtype)
