"""Inputs of Diffusion²: one image (image-to-4D) or a folder of frames 0.png, 1.png, ... (video-to-4D).

Everything here is checked and preprocessed before a model is loaded, so a bad input fails at once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional

import torch
from PIL import Image
from sv3d import image_to_tensor, preprocess_orbit_image

MAX_FRAMES = 25  # SVD-xt's video length
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass
class Diffusion2Input:
    """condition: (1, 3, S, S) in [-1, 1], the view the orbit is sampled from (the image, or the last video frame).
    video: (F, 3, S, S) in [-1, 1] for a video input, else None (SVD-xt samples the reference video)."""

    condition: torch.Tensor
    video: Optional[torch.Tensor]
    paths: List[str]

    @property
    def is_video(self) -> bool:
        return self.video is not None


def list_input_frames(input_path: str) -> List[str]:
    """The image, or the folder's frames ordered by their integer names; errors name the path and the fix."""
    if os.path.isfile(input_path):
        if not input_path.lower().endswith(IMAGE_SUFFIXES):
            raise ValueError(f"--input_path {input_path!r} is not a .png/.jpg/.jpeg image")
        return [input_path]
    if not os.path.isdir(input_path):
        raise FileNotFoundError(f"--input_path {input_path!r} does not exist (give an image or a folder 0.png, 1.png, ...)")
    names = sorted(n for n in os.listdir(input_path) if n.lower().endswith(IMAGE_SUFFIXES))
    if not names:
        raise ValueError(f"the folder {input_path!r} holds no .png/.jpg/.jpeg frames")
    bad = [n for n in names if not os.path.splitext(n)[0].isdigit()]
    if bad:
        raise ValueError(f"frames must be named by their index (0.png, 1.png, ...); {input_path!r} has {bad[:3]}")
    names.sort(key=lambda n: int(os.path.splitext(n)[0]))
    if len(names) > MAX_FRAMES:
        raise ValueError(
            f"{input_path!r} holds {len(names)} frames; SVD-xt takes at most {MAX_FRAMES}: keep {MAX_FRAMES} or fewer "
            "frames (e.g. every other one)"
        )
    return [os.path.join(input_path, n) for n in names]


def load_input(input_path: str, image_frame_ratio: Optional[float] = None, size: int = 576) -> Diffusion2Input:
    """Preprocess as the reference: an image is cropped to its alpha box and centred (side = box / ratio, or
    the image height); video frames are kept whole when no ratio is given (they must then be square), else each
    is cropped and centred. All on white, resized to `size`. The orbit's condition is the *last* frame."""
    paths = list_input_frames(input_path)
    video = len(paths) > 1 or os.path.isdir(input_path)
    if video and image_frame_ratio is None:
        for p in paths:  # headers only: fail before decoding anything
            with Image.open(p) as im:
                if im.width != im.height:
                    raise ValueError(
                        f"frame {p!r} is {im.width}x{im.height}, not square: pass --image_frame_ratio (e.g. 0.9) so "
                        "that each frame is cropped to the object and centred on a square"
                    )
    frames = []
    for p in paths:
        try:
            pil = preprocess_orbit_image(p, image_frame_ratio, size, recentre=not video or image_frame_ratio is not None)
        except ValueError as exc:
            raise ValueError(f"{p}: {exc}") from None
        frames.append(image_to_tensor(pil))
    frames_t = torch.cat(frames)
    return Diffusion2Input(condition=frames_t[-1:], video=frames_t if video else None, paths=paths)
