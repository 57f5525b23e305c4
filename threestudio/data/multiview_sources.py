"""Reading posed images from disk: NeRF-synthetic / instant-ngp `transforms*.json` and orbit videos.

Both readers return a `ViewSet`: straight-colour images, masks, camera-to-world matrices (z-up world,
OpenGL camera axes, docs/architecture.md §3) and pinhole intrinsics. Every problem with the input raises a
`DatasetError` that names the file and says what is wrong.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from threestudio.utils.ops import orbit_c2w

logger = logging.getLogger("threestudio")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".exr")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".gif")


class DatasetError(ValueError):
    """The input images or camera files are missing or malformed."""


@dataclass
class ViewSet:
    """N posed views. images: (N,H,W,3) straight colour in [0,1]; masks: (N,H,W,1) in [0,1];
    c2w: (N,4,4); intrinsics: (N,4) as fx, fy, cx, cy in pixels."""

    images: Tensor
    masks: Tensor
    c2w: Tensor
    intrinsics: Tensor
    names: list = field(default_factory=list)
    has_mask: bool = True

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def height(self) -> int:
        return self.images.shape[1]

    @property
    def width(self) -> int:
        return self.images.shape[2]

    def subset(self, indices: Sequence[int]) -> "ViewSet":
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        return ViewSet(self.images[idx], self.masks[idx], self.c2w[idx], self.intrinsics[idx],
                       [self.names[i] for i in idx.tolist()], self.has_mask)

    def resized(self, height: int, width: int) -> "ViewSet":
        """Area-correct resize (premultiplied by the mask, so edges do not pick up the background)."""
        if (height, width) == (self.height, self.width):
            return self
        rgba = torch.cat([self.images * self.masks, self.masks], dim=-1).permute(0, 3, 1, 2)
        antialias = height < self.height or width < self.width
        rgba = F.interpolate(rgba, size=(height, width), mode="bilinear", align_corners=False, antialias=antialias)
        rgba = rgba.permute(0, 2, 3, 1).clamp(0, 1)
        mask = rgba[..., 3:]
        images = torch.where(mask > 1e-6, rgba[..., :3] / mask.clamp_min(1e-6), torch.zeros_like(rgba[..., :3]))
        scale = torch.tensor([width / self.width, height / self.height, width / self.width, height / self.height])
        return ViewSet(images.clamp(0, 1), mask, self.c2w, self.intrinsics * scale, self.names, self.has_mask)


# ----------------------------------------------------------------------------------- images
def natural_key(name: str) -> list:
    """Sort key that orders frame_2 before frame_10."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def read_image(path: str) -> np.ndarray:
    """(H,W,C) float32 in [0,1], C = 3 or 4; clear errors for missing and undecodable files."""
    from PIL import Image, UnidentifiedImageError

    if not os.path.isfile(path):
        raise DatasetError(f"Image file '{path}' does not exist.")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I"):
                arr = np.asarray(im, dtype=np.float32) / 65535.0
            else:
                im = im.convert("RGBA" if ("A" in im.getbands() or "transparency" in im.info) else "RGB")
                arr = np.asarray(im, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DatasetError(f"'{path}' is not a readable image ({type(e).__name__}: {e}). "
                           "Frames must be PNG/JPEG/WebP images.") from None
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    return arr


def read_mask(path: str) -> np.ndarray:
    """(H,W,1) float mask from a greyscale or RGB(A) image (alpha if it has one, else luminance)."""
    arr = read_image(path)
    return arr[..., 3:4] if arr.shape[-1] == 4 else arr[..., :3].mean(axis=-1, keepdims=True)


def mask_from_background(rgb: np.ndarray, background: str, threshold: float) -> np.ndarray:
    """Binary mask of pixels that differ from a flat white/black background by more than `threshold`."""
    bg = 1.0 if background == "white" else 0.0
    return (np.abs(rgb - bg).max(axis=-1, keepdims=True) > threshold).astype(np.float32)


def split_rgba(arr: np.ndarray, path: str, mask_path: Optional[str], key_background: Optional[str],
               key_threshold: float) -> tuple[np.ndarray, np.ndarray, bool]:
    """Straight RGB and mask of an image: alpha channel, else a mask file, else a colour key, else all ones."""
    rgb = arr[..., :3]
    if mask_path is not None:
        mask = read_mask(mask_path)
        if mask.shape[:2] != rgb.shape[:2]:
            raise DatasetError(f"Mask '{mask_path}' is {mask.shape[1]}x{mask.shape[0]} but image '{path}' is "
                               f"{rgb.shape[1]}x{rgb.shape[0]}.")
        return rgb, mask, True
    if arr.shape[-1] == 4:
        return rgb, arr[..., 3:4], True
    if key_background in ("white", "black"):
        return rgb, mask_from_background(rgb, key_background, key_threshold), True
    return rgb, np.ones_like(rgb[..., :1]), False


def find_mask(mask_dir: Optional[str], image_path: str) -> Optional[str]:
    """The mask of `image_path` in `mask_dir`: same stem, any image extension."""
    if mask_dir is None:
        return None
    stem = os.path.splitext(os.path.basename(image_path))[0]
    for ext in IMAGE_EXTENSIONS:
        candidate = os.path.join(mask_dir, stem + ext)
        if os.path.isfile(candidate):
            return candidate
    raise DatasetError(f"No mask for image '{image_path}' in mask folder '{mask_dir}' (looked for {stem}.png etc.).")


def _stack(images: list[np.ndarray], names: list[str], source: str) -> Tensor:
    shapes = {im.shape[:2] for im in images}
    if len(shapes) > 1:
        first = images[0].shape[:2]
        bad = next(n for n, im in zip(names, images) if im.shape[:2] != first)
        raise DatasetError(f"{source}: all images must have the same size; '{names[0]}' is {first[1]}x{first[0]} "
                           f"but '{bad}' is not.")
    return torch.from_numpy(np.stack(images)).float()


# ------------------------------------------------------------------------------ transforms json
def transforms_files(dataroot: str, splits: dict[str, str]) -> dict[str, str]:
    """Map split name -> transforms json path. `dataroot` is a json file (used for every split) or a folder
    with transforms_<split>.json files or one transforms.json."""
    if os.path.isfile(dataroot):
        return {split: dataroot for split in splits}
    if not os.path.isdir(dataroot):
        raise DatasetError(f"Data root '{dataroot}' does not exist.")
    found = {split: os.path.join(dataroot, f"transforms_{name}.json") for split, name in splits.items()}
    found = {split: path for split, path in found.items() if os.path.isfile(path)}
    single = os.path.join(dataroot, "transforms.json")
    if "train" not in found:
        if not os.path.isfile(single):
            raise DatasetError(f"No transforms_{splits.get('train', 'train')}.json or transforms.json in '{dataroot}'.")
        return {split: single for split in splits}
    return found


def _require(entry: dict, key: str, where: str, path: str) -> Any:
    if key not in entry:
        raise DatasetError(f"{path}: {where} has no '{key}'.")
    return entry[key]


def _resolve_image(root: str, file_path: str, json_path: str, index: int) -> str:
    candidate = file_path if os.path.isabs(file_path) else os.path.normpath(os.path.join(root, file_path))
    if os.path.isfile(candidate):
        return candidate
    # NeRF-synthetic writes file_path without its extension
    for ext in (".png", ".jpg", ".jpeg", ".PNG", ".JPG"):
        if os.path.isfile(candidate + ext):
            return candidate + ext
    raise DatasetError(f"{json_path}: frames[{index}].file_path '{file_path}' -> image '{candidate}' does not exist.")


def _intrinsics(meta: dict, frame: dict, width: int, height: int, json_path: str, index: int) -> tuple:
    """fx, fy, cx, cy in pixels of the image as stored; frame keys override file keys (instant-ngp)."""
    merged = {**meta, **frame}
    w_ref = float(merged.get("w", width))
    h_ref = float(merged.get("h", height))
    sx, sy = width / w_ref, height / h_ref
    if "fl_x" in merged or "fl_y" in merged:
        fx = float(merged.get("fl_x", merged.get("fl_y")))
        fy = float(merged.get("fl_y", fx))
    elif "camera_angle_x" in merged:
        fx = 0.5 * w_ref / math.tan(0.5 * float(merged["camera_angle_x"]))
        fy = 0.5 * h_ref / math.tan(0.5 * float(merged["camera_angle_y"])) if "camera_angle_y" in merged else fx
    else:
        raise DatasetError(f"{json_path}: no camera intrinsics for frames[{index}]; give 'camera_angle_x' or "
                           "'fl_x'/'fl_y' (with 'cx', 'cy', 'w', 'h').")
    cx = float(merged.get("cx", w_ref / 2.0))
    cy = float(merged.get("cy", h_ref / 2.0))
    return fx * sx, fy * sy, cx * sx, cy * sy


def _transform_matrix(value: Any, json_path: str, index: int) -> np.ndarray:
    """A frame's camera-to-world matrix: 4x4 (or 3x4) finite numbers."""
    where = f"{json_path}: frames[{index}].transform_matrix"
    rows = value if isinstance(value, list) else None
    if rows is None or not all(isinstance(r, list) for r in rows) or len({len(r) for r in rows}) > 1:
        raise DatasetError(f"{where} must be a 4x4 (or 3x4) list of rows of numbers, got {str(value)[:80]}.")
    try:
        matrix = np.asarray(rows, dtype=np.float32)
    except (TypeError, ValueError):
        raise DatasetError(f"{where} holds non-numbers: {str(value)[:80]}.") from None
    if matrix.shape not in ((4, 4), (3, 4)):
        raise DatasetError(f"{where} must be 4x4 (or 3x4), got {matrix.shape[0]}x{matrix.shape[1] if matrix.ndim > 1 else 0}.")
    if not np.isfinite(matrix).all():
        raise DatasetError(f"{where} contains NaN or infinite values.")
    return matrix


def warn_if_unmasked(has_mask: bool, source: str, key: str = "data.key_background") -> None:
    """Images without alpha, mask folder or colour key train with mask = 1 everywhere: say so."""
    if not has_mask:
        logger.warning(
            "%s: the images have no alpha channel and no mask folder (data.mask_dir), so every pixel counts as "
            "object (mask = 1). If the object stands on a flat white or black background, set %s=white (or "
            "black) to key it out; otherwise give RGBA images or data.mask_dir.", source, key)


def load_transforms(json_path: str, mask_dir: Optional[str] = None, key_background: Optional[str] = None,
                    key_threshold: float = 0.02) -> ViewSet:
    """Read one transforms json and its images."""
    try:
        with open(json_path) as fp:
            meta = json.load(fp)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{json_path} is not valid JSON: {e}") from None
    if not isinstance(meta, dict):
        raise DatasetError(f"{json_path}: expected a JSON object with a 'frames' list.")
    frames = _require(meta, "frames", "the file", json_path)
    if not isinstance(frames, list) or not frames:
        raise DatasetError(f"{json_path}: 'frames' must be a non-empty list.")
    root = os.path.dirname(os.path.abspath(json_path))
    images, masks, c2ws, intr, names = [], [], [], [], []
    has_mask = True
    for i, frame in enumerate(frames):
        if not isinstance(frame, dict):
            raise DatasetError(f"{json_path}: frames[{i}] must be an object with 'file_path' and "
                               f"'transform_matrix', got {type(frame).__name__} {str(frame)[:60]!r}.")
        file_path = _require(frame, "file_path", f"frames[{i}]", json_path)
        if not isinstance(file_path, str) or not file_path:
            raise DatasetError(f"{json_path}: frames[{i}].file_path must be a non-empty string, got {file_path!r}.")
        matrix = _transform_matrix(_require(frame, "transform_matrix", f"frames[{i}]", json_path), json_path, i)
        if matrix.shape == (3, 4):
            matrix = np.concatenate([matrix, np.array([[0, 0, 0, 1]], np.float32)])
        path = _resolve_image(root, file_path, json_path, i)
        rgb, mask, ok = split_rgba(read_image(path), path, find_mask(mask_dir, path), key_background, key_threshold)
        has_mask &= ok
        height, width = rgb.shape[:2]
        intr.append(_intrinsics(meta, frame, width, height, json_path, i))
        images.append(rgb), masks.append(mask), c2ws.append(matrix), names.append(path)
    warn_if_unmasked(has_mask, json_path)
    return ViewSet(_stack(images, names, json_path), _stack(masks, names, json_path),
                   torch.from_numpy(np.stack(c2ws)).float(), torch.tensor(intr, dtype=torch.float32), names, has_mask)


# ----------------------------------------------------------------------------------- orbit videos
def read_orbit_frames(path: str) -> tuple[list[np.ndarray], list[str]]:
    """Frames of an orbit: a video file, or a folder of images ordered by the numbers in their names."""
    if os.path.isdir(path):
        names = sorted((n for n in os.listdir(path)
                        if not n.startswith(".") and os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS),
                       key=natural_key)
        if not names:
            raise DatasetError(f"Orbit folder '{path}' contains no image files ({', '.join(IMAGE_EXTENSIONS)}).")
        files = [os.path.join(path, n) for n in names]
        return [read_image(f) for f in files], files
    if not os.path.isfile(path):
        raise DatasetError(f"Orbit video or folder '{path}' does not exist.")
    if os.path.splitext(path)[1].lower() not in VIDEO_EXTENSIONS:
        raise DatasetError(f"'{path}' is neither a folder of frames nor a video ({', '.join(VIDEO_EXTENSIONS)}).")
    import imageio.v2 as imageio

    try:
        frames = [np.asarray(f, dtype=np.float32)[..., :3] / 255.0 for f in imageio.mimread(path, memtest=False)]
    except Exception as e:  # noqa: BLE001 - imageio raises many types for a broken file
        raise DatasetError(f"Could not decode video '{path}': {type(e).__name__}: {e}") from None
    if not frames:
        raise DatasetError(f"Video '{path}' has no frames.")
    return frames, [f"{path}#{i}" for i in range(len(frames))]


def orbit_azimuths(n_frames: int, offset_deg: float = 0.0) -> Tensor:
    """Evenly spaced azimuths with the LAST frame at `offset_deg` (the input view), docs/architecture.md §3."""
    return (offset_deg + (torch.arange(n_frames, dtype=torch.float32) + 1) * 360.0 / n_frames) % 360.0


def load_orbit(path: str, elevation_deg: Any, distance: float, fovy_deg: float, azimuth_offset_deg: float = 0.0,
               mask_dir: Optional[str] = None, key_background: Optional[str] = "white",
               key_threshold: float = 0.02) -> ViewSet:
    """An orbit (N frames, evenly spaced azimuths, last = input view) as posed views."""
    frames, names = read_orbit_frames(path)
    n = len(frames)
    if isinstance(elevation_deg, (list, tuple)):
        if len(elevation_deg) != n:
            raise DatasetError(f"Orbit '{path}' has {n} frames but {len(elevation_deg)} elevations were given "
                               "(data.orbit_elevation_deg): give one per frame or a single number.")
        elevation = torch.tensor([float(e) for e in elevation_deg])
    else:
        elevation = torch.full((n,), float(elevation_deg))
    images, masks, has_mask = [], [], True
    for arr, name in zip(frames, names):
        rgb, mask, ok = split_rgba(arr, name, find_mask(mask_dir, name) if os.path.isdir(path) else None,
                                   key_background, key_threshold)
        images.append(rgb), masks.append(mask)
        has_mask &= ok
    warn_if_unmasked(has_mask, path)
    images_t, masks_t = _stack(images, names, path), _stack(masks, names, path)
    height, width = images_t.shape[1:3]
    c2w = orbit_c2w(elevation, orbit_azimuths(n, azimuth_offset_deg), torch.full((n,), float(distance)))
    fy = 0.5 * height / math.tan(math.radians(fovy_deg) / 2)
    intr = torch.tensor([[fy, fy, width / 2.0, height / 2.0]] * n, dtype=torch.float32)
    return ViewSet(images_t, masks_t, c2w.float(), intr, names, has_mask)
