"""Hi3D input: RGBA, or RGB with a mask, or RGB on a plain background -> the reference's white-background square.

No background-removal model can be downloaded here (the reference runs rembg/u2net, which fetches its weights),
so an RGB photo on a cluttered background is refused with what to pass instead.
"""

from __future__ import annotations

import math
import os
from typing import Optional, Union

import numpy as np
import torch
from PIL import Image

from sv3d.preprocess import image_to_tensor, preprocess_orbit_image

ImageLike = Union[str, os.PathLike, Image.Image]
NO_REMBG = (
    "background removal needs a segmentation model, and none can be downloaded here (the reference's rembg fetches "
    "u2net at run time): pass an RGBA image whose alpha is the object mask, --mask <mask.png>, or an image on a plain "
    "(uniform) background"
)


def _open(image: ImageLike) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    if not os.path.isfile(image):
        raise FileNotFoundError(f"input image {os.fspath(image)!r} does not exist")
    img = Image.open(image)
    img.load()
    return img


def key_plain_background(rgb: np.ndarray, tolerance: float = 12.0, max_border_std: float = 6.0) -> np.ndarray:
    """(H, W, 3) uint8 on a uniform background -> (H, W) uint8 alpha (255 where the colour differs from the border's
    median by more than `tolerance`). Raises when the border is not uniform."""
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]]).astype(np.float32)
    bg = np.median(border, axis=0)
    if float(np.abs(border - bg).max(axis=1).std()) > max_border_std or float(np.abs(border - bg).max(axis=1).mean()) > tolerance:
        raise ValueError("the RGB input has no uniform background to key out; " + NO_REMBG)
    dist = np.abs(rgb.astype(np.float32) - bg).max(axis=-1)
    return np.where(dist > tolerance, 255, 0).astype(np.uint8)


def load_rgba(image: ImageLike, mask: Optional[ImageLike] = None) -> Image.Image:
    """RGBA of the object: the image's alpha, else `mask` (L, white = object), else a keyed plain background."""
    img = _open(image)
    if mask is not None:
        m = _open(mask).convert("L")
        if m.size != img.size:
            raise ValueError(f"mask size {m.size} differs from the image size {img.size}")
        rgba = img.convert("RGB").convert("RGBA")
        rgba.putalpha(m)
        return rgba
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        if np.asarray(rgba)[..., 3].max() == 0:
            raise ValueError("the input's alpha channel is empty (fully transparent)")
        return rgba
    rgb = np.asarray(img.convert("RGB"))
    rgba = Image.fromarray(np.dstack([rgb, key_plain_background(rgb)]), "RGBA")
    return rgba


def white_composite(rgba: Image.Image) -> Image.Image:
    arr = np.asarray(rgba.convert("RGBA"), dtype=np.float32) / 255.0
    rgb = arr[..., :3] * arr[..., 3:] + (1.0 - arr[..., 3:])
    return Image.fromarray((rgb * 255.0 + 0.5).astype(np.uint8))


def reference_square(white: Image.Image, size: int) -> Image.Image:
    """The reference's framing: resize so the short side is `size` (ceil), centre crop size x size."""
    w, h = white.size
    rate = max(size / h, size / w)
    resized = white.resize((math.ceil(w * rate), math.ceil(h * rate)), Image.BILINEAR)
    rw, rh = resized.size
    left, top = int(round((rw - size) / 2.0)), int(round((rh - size) / 2.0))
    return resized.crop((left, top, left + size, top + size))


def prepare_input(image: ImageLike, size: int = 512, mask: Optional[ImageLike] = None,
                  frame_ratio: Optional[float] = None):
    """-> (rgba, white square PIL at `size`, (1, 3, size, size) tensor in [-1, 1]).

    Default framing as the reference (the whole picture, centre-cropped); `frame_ratio` instead recentres the
    object on its alpha box, object size = frame_ratio x frame (as sv3d does)."""
    rgba = load_rgba(image, mask)
    if frame_ratio is not None:
        square = preprocess_orbit_image(rgba, frame_ratio, size)
    else:
        square = reference_square(white_composite(rgba), size)
    return rgba, square, image_to_tensor(square)


def frames_to_tensor(frames, size: int) -> torch.Tensor:
    """list of PIL / (T, 3, H, W) in [0, 1] -> (T, 3, size, size) in [-1, 1] (bilinear resize)."""
    if isinstance(frames, torch.Tensor):
        x = frames.float()
        if x.shape[-1] != size or x.shape[-2] != size:
            x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        return x * 2.0 - 1.0
    return torch.cat([image_to_tensor(f.convert("RGB").resize((size, size), Image.BILINEAR)) for f in frames])
