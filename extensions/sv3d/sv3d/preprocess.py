"""Input-image preprocessing of the reference sampling script, and the CLIP preprocessing of its image embedder."""

from __future__ import annotations

import os
from typing import Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _rembg_model_path() -> str:
    home = os.environ.get("U2NET_HOME", os.path.join(os.path.expanduser("~"), ".u2net"))
    return os.path.join(home, "u2net.onnx")


def remove_background(image: Image.Image) -> Image.Image:
    """RGBA cut-out through rembg (as the reference does), only when rembg and its model are present locally."""
    try:
        import rembg  # noqa: F401
    except ImportError:
        raise ValueError(
            "the input image has no alpha channel and background removal needs the optional package 'rembg', "
            "which is not installed: pass an RGBA image whose alpha is the object mask"
        ) from None
    model = _rembg_model_path()
    if not os.path.isfile(model):
        raise ValueError(
            f"the input image has no alpha channel and rembg's model is not present at {model} (nothing is "
            "downloaded at run time): pass an RGBA image whose alpha is the object mask"
        )
    image = image.copy()
    image.thumbnail([768, 768], Image.Resampling.LANCZOS)
    return rembg.remove(image.convert("RGBA"), alpha_matting=True)


def open_image(path: Union[str, os.PathLike]) -> Image.Image:
    """A decoded image file; a missing or undecodable file raises FileNotFoundError / ValueError naming it."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image {os.fspath(path)!r} does not exist")
    try:
        image = Image.open(path)
        image.load()
    except (OSError, SyntaxError, ValueError) as exc:  # PIL's UnidentifiedImageError is an OSError
        raise ValueError(f"image {os.fspath(path)!r} is not a readable image ({type(exc).__name__}: {exc})") from None
    return image


def _to_rgba(image: Image.Image) -> Optional[Image.Image]:
    if image.mode == "RGBA":
        return image
    if image.mode in ("LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        return image.convert("RGBA")
    return None


def preprocess_orbit_image(
    image: Union[str, os.PathLike, Image.Image],
    image_frame_ratio: Optional[float] = None,
    size: int = 576,
    recentre: bool = True,
) -> Image.Image:
    """SV3D input: crop to the alpha bounding box, centre on a square canvas, resize, composite on white.

    The square's side is max(box side) / image_frame_ratio, or the image height when no ratio is given (as the
    reference); it is never smaller than the box. Non-RGBA input goes through `remove_background`.
    `recentre=False` keeps a square frame as it is (only resized and composited), as Diffusion² treats video
    frames when no ratio is given; a non-square frame is then an error.
    """
    if not isinstance(image, Image.Image):
        image = open_image(image)
    rgba = _to_rgba(image)
    if rgba is None:
        rgba = remove_background(image)
    if image_frame_ratio is not None and not 0 < image_frame_ratio <= 1:
        raise ValueError(f"image_frame_ratio must be in (0, 1], got {image_frame_ratio}")
    arr = np.array(rgba)
    if not recentre:
        if arr.shape[0] != arr.shape[1]:
            raise ValueError(
                f"the frame is {arr.shape[1]}x{arr.shape[0]}, not square: give an image_frame_ratio so that the "
                "object is cropped and centred on a square"
            )
        return _resize_on_white(arr, size)
    ys, xs = np.nonzero(arr[..., 3] > 0)
    if len(xs) == 0:
        raise ValueError("the image's alpha channel is empty (fully transparent): nothing to centre")
    x, y = int(xs.min()), int(ys.min())
    w, h = int(xs.max()) - x + 1, int(ys.max()) - y + 1
    box = max(w, h)
    side = int(box / image_frame_ratio) if image_frame_ratio is not None else arr.shape[0]
    side = max(side, box)
    canvas = np.zeros((side, side, 4), dtype=np.uint8)
    c = side // 2
    canvas[c - h // 2 : c - h // 2 + h, c - w // 2 : c - w // 2 + w] = arr[y : y + h, x : x + w]
    return _resize_on_white(canvas, size)


def _resize_on_white(rgba: np.ndarray, size: int) -> Image.Image:
    """(S, S, 4) uint8 -> size x size RGB, Lanczos-resized then composited on white."""
    out = np.array(Image.fromarray(rgba).resize((size, size), Image.LANCZOS)) / 255.0
    rgb = out[..., :3] * out[..., 3:] + (1.0 - out[..., 3:])
    return Image.fromarray((rgb * 255).astype(np.uint8))


def preprocess_video_image(image: Union[str, os.PathLike, Image.Image]) -> Image.Image:
    """SVD input: RGB (alpha dropped, as the reference), sides cut down to multiples of 64."""
    if not isinstance(image, Image.Image):
        image = open_image(image)
    image = image.convert("RGB")
    w, h = image.size
    if w % 64 or h % 64:
        image = image.resize((max(64, w - w % 64), max(64, h - h % 64)))
    return image


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> (1, 3, H, W) in [-1, 1]."""
    arr = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)
    return arr.permute(2, 0, 1)[None] * 2.0 - 1.0


def _gaussian_kernel1d(size: int, sigma: float, dtype: torch.dtype, device) -> torch.Tensor:
    x = torch.arange(size, dtype=dtype, device=device) - size // 2
    if size % 2 == 0:
        x = x + 0.5
    k = torch.exp(-(x**2) / (2.0 * sigma**2))
    return k / k.sum()


def antialiased_resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bicubic resize (align_corners=True) after a Gaussian blur when shrinking: the resize that the original
    image embedder performs with kornia (`kornia.geometry.resize(..., antialias=True)`), re-implemented here
    so that kornia is not a dependency. Kernel: sigma = (factor - 1) / 2, size = odd >= max(3, 4 sigma),
    reflect padding."""
    h, w = x.shape[-2:]
    factors = (h / size, w / size)
    if max(factors) > 1:
        sig = [max((f - 1.0) / 2.0, 0.001) for f in factors]
        ks = [int(max(2.0 * 2 * s, 3)) for s in sig]
        ks = [k if k % 2 else k + 1 for k in ks]
        c = x.shape[1]
        ky = _gaussian_kernel1d(ks[0], sig[0], x.dtype, x.device).view(1, 1, -1, 1).repeat(c, 1, 1, 1)
        kx = _gaussian_kernel1d(ks[1], sig[1], x.dtype, x.device).view(1, 1, 1, -1).repeat(c, 1, 1, 1)
        x = F.pad(x, (ks[1] // 2, ks[1] // 2, ks[0] // 2, ks[0] // 2), mode="reflect")
        x = F.conv2d(F.conv2d(x, ky, groups=c), kx, groups=c)
    return F.interpolate(x, size=(size, size), mode="bicubic", align_corners=True)


def clip_preprocess(x: torch.Tensor, size: int = 224) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> CLIP input: antialiased resize, to [0, 1], CLIP mean/std normalisation."""
    x = antialiased_resize(x, size)
    x = (x + 1.0) / 2.0
    mean = torch.tensor(CLIP_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std

