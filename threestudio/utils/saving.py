"""Writing images, image grids, videos and files into a trial's `save/` folder."""
from __future__ import annotations

import json
import logging
import os
import re
from typing import Any, Optional, Sequence, Union

import imageio.v2 as imageio
import numpy as np
import torch
from torch import Tensor

ImageLike = Union[Tensor, np.ndarray]

logger = logging.getLogger(__name__)
# a step's output in save/: it<N>-test/, it<N>-test.mp4, it<N>-export/, it<N>-0.png, ...
_STEP_OUTPUT = re.compile(r"^(it\d+)(-.*)$")


def to_uint8_image(img: ImageLike, data_range: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """(H,W,C) or (H,W) float image in `data_range` -> (H,W,3|4) uint8; 1-channel images become grey RGB."""
    if isinstance(img, Tensor):
        img = img.detach().float().cpu().numpy()
    img = np.asarray(img, dtype=np.float32)
    lo, hi = data_range
    img = np.clip((img - lo) / (hi - lo), 0.0, 1.0)
    if img.ndim == 2:
        img = img[..., None]
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    return (img * 255.0 + 0.5).astype(np.uint8)


def write_image_atomic(path: str, image: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    root, ext = os.path.splitext(path)
    tmp = f"{root}.tmp{ext}"
    imageio.imwrite(tmp, image)
    os.replace(tmp, path)


def _frame_index(name: str) -> int:
    digits = re.findall(r"\d+", os.path.basename(name))
    return int(digits[-1]) if digits else -1


def write_video(path: str, frames: Sequence[np.ndarray], fps: int = 30) -> None:
    """Encode uint8 frames as an mp4 (H.264 via imageio-ffmpeg); even sizes are padded for the codec."""
    if not frames:
        raise ValueError(f"No frames to write to {path}.")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path[: -len(".mp4")] + ".tmp.mp4" if path.endswith(".mp4") else path + ".tmp"
    with imageio.get_writer(tmp, fps=fps, codec="libx264", quality=8, macro_block_size=1,
                            pixelformat="yuv420p",
                            ffmpeg_params=["-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2"]) as writer:
        for frame in frames:
            writer.append_data(frame[..., :3])
    os.replace(tmp, path)


class SaverMixin:
    """Mixed into systems: paths are relative to `self.get_save_dir()` (the trial's `save/`)."""

    _save_dir: Optional[str] = None
    _earlier_outputs: frozenset = frozenset()

    def set_save_dir(self, save_dir: str) -> None:
        self._save_dir = save_dir
        # what earlier launches of this trial left in save/, listed once before any work (so that all DDP
        # ranks agree); this launch never replaces a step output among them, see output_path
        self._earlier_outputs = frozenset(os.listdir(save_dir)) if os.path.isdir(save_dir) else frozenset()
        self._renamed_outputs: dict[str, str] = {}

    def get_save_dir(self) -> str:
        if self._save_dir is None:
            raise RuntimeError("The save directory is not set: call set_save_dir() first.")
        return self._save_dir

    def output_path(self, relative: str) -> str:
        """Path of `relative` (a file or folder) in the save directory. A step output (first part
        `it<N>-...`) that an earlier launch left there, e.g. when a trial is tested or exported again with
        other settings, is kept: this launch writes `it<N>.2-...` (or `.3`, ...) instead and says so."""
        first, _, rest = relative.replace(os.sep, "/").partition("/")
        match = _STEP_OUTPUT.match(first)
        if match and first in self._earlier_outputs:
            if first not in self._renamed_outputs:
                copy = 2
                while f"{match.group(1)}.{copy}{match.group(2)}" in self._earlier_outputs:
                    copy += 1
                self._renamed_outputs[first] = f"{match.group(1)}.{copy}{match.group(2)}"
                logger.info("save/%s is from an earlier launch and is kept: this one writes save/%s",
                            first, self._renamed_outputs[first])
            first = self._renamed_outputs[first]
        return os.path.join(self.get_save_dir(), first, *([rest] if rest else []))

    def get_save_path(self, filename: str) -> str:
        path = self.output_path(filename)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return path

    def save_image(self, filename: str, img: ImageLike, data_range: tuple[float, float] = (0.0, 1.0)) -> str:
        path = self.get_save_path(filename)
        write_image_atomic(path, to_uint8_image(img, data_range))
        return path

    def save_image_grid(self, filename: str, panels: Sequence[dict[str, Any]]) -> str:
        """Save images side by side. Each panel: {"img": (H,W,C) tensor, "data_range": (lo, hi)}."""
        images = [to_uint8_image(p["img"], p.get("data_range", (0.0, 1.0)))[..., :3] for p in panels]
        height = max(im.shape[0] for im in images)
        images = [np.pad(im, ((0, height - im.shape[0]), (0, 0), (0, 0))) for im in images]
        path = self.get_save_path(filename)
        write_image_atomic(path, np.concatenate(images, axis=1))
        return path

    def save_img_sequence(self, filename: str, img_dir: str, fps: int = 30) -> str:
        """Encode the PNGs of `img_dir` (relative to the save dir), ordered by their number, as an mp4."""
        folder = self.output_path(img_dir)
        names = sorted((n for n in os.listdir(folder) if n.endswith(".png")), key=_frame_index)
        frames = [imageio.imread(os.path.join(folder, n)) for n in names]
        path = self.get_save_path(filename if filename.endswith(".mp4") else filename + ".mp4")
        write_video(path, frames, fps=fps)
        return path

    def save_json(self, filename: str, payload: Any) -> str:
        path = self.get_save_path(filename)
        tmp = path + ".tmp"
        with open(tmp, "w") as fp:
            json.dump(payload, fp, indent=2)
        os.replace(tmp, path)
        return path

    def save_tensor(self, filename: str, value: Tensor) -> str:
        path = self.get_save_path(filename)
        np.save(path, value.detach().cpu().numpy())
        return path
