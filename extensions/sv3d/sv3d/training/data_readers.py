"""Readers of multiview training sets into a common description: objects made of camera rings.

Formats:
- `svd_meta`: the SVD-MV reference's `svd_meta.jsonl` (one object a line, `{"image_path": [...], "elevation":
  [...]}`, paths relative to an image root). Lines are parsed as JSON, or as Python literals with
  `ast.literal_eval` (the reference writes them with `str(dict)` and reads them with `eval`; we never `eval`).
  Optional `"azimuth"` (degrees); else the views are taken as evenly spaced in file order.
- `hi3d`: Hi3D object folders `<root>/[images/]<uid>/`, each with R x V images (default 6 elevations
  -10..40 deg x 16 views), in sorted file order ring by ring; no camera files.
- `transforms`: our orbit folders, `transforms.json` (NeRF-synthetic, z-up world, c2w) in the root or in each
  sub-folder; frames in file order form one ring; elevation/azimuth come from the camera positions.
"""

from __future__ import annotations

import ast
import json
import math
import os
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np

FORMATS = ("auto", "svd_meta", "hi3d", "transforms")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
HI3D_ELEVATIONS = (-10.0, 0.0, 10.0, 20.0, 30.0, 40.0)


class DatasetError(ValueError):
    """A malformed dataset; the message names the file (and line) and what is wrong."""


@dataclass
class OrbitRing:
    """Views of one orbit in order; azimuths in degrees in any fixed origin (made relative per clip)."""

    image_paths: List[str]
    elevations_deg: List[float]
    azimuths_deg: List[float]


@dataclass
class OrbitObject:
    name: str
    rings: List[OrbitRing] = field(default_factory=list)

    @property
    def num_views(self) -> int:
        return sum(len(r.image_paths) for r in self.rings)


def evenly_spaced_azimuths(n: int) -> List[float]:
    return [360.0 * i / n for i in range(n)]


def parse_meta_line(line: str, where: str) -> dict:
    """One `svd_meta.jsonl` line as a dict: JSON first, then a Python literal (never `eval`)."""
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        pass
    try:
        return ast.literal_eval(line)
    except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
        raise DatasetError(f"{where}: not a JSON object nor a Python dict literal ({type(exc).__name__}: {exc})") from None


def _numbers(value, where: str, key: str, n: int) -> List[float]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise DatasetError(f"{where}: {key!r} must be a list of numbers")
    if len(value) != n:
        raise DatasetError(f"{where}: {key!r} has {len(value)} values but 'image_path' has {n}")
    out = [float(v) for v in value]
    if not all(math.isfinite(v) for v in out):
        raise DatasetError(f"{where}: {key!r} holds a non-finite value")
    return out


def read_svd_meta(meta_path: str, image_root: str = "", errors: Optional[List[str]] = None) -> List[OrbitObject]:
    """Objects of an `svd_meta.jsonl`; raises DatasetError naming `file:line` on the first malformed line, or, with
    an `errors` list, appends every problem to it and skips the line."""
    if not os.path.isfile(meta_path):
        raise DatasetError(f"meta file {meta_path!r} does not exist (data.meta)")
    objects = []
    with open(meta_path, encoding="utf-8") as f:
        for lineno, raw in enumerate(f, start=1):
            line = raw.strip()
            if not line:
                continue
            try:
                objects.append(_meta_object(line, f"{meta_path}:{lineno}", lineno, image_root))
            except DatasetError as exc:
                if errors is None:
                    raise
                errors.append(str(exc))
    if not objects and not errors:
        raise DatasetError(f"{meta_path}: no objects (the file is empty)")
    return objects


def _meta_object(line: str, where: str, lineno: int, image_root: str) -> OrbitObject:
    entry = parse_meta_line(line, where)
    if not isinstance(entry, dict):
        raise DatasetError(f"{where}: expected an object with 'image_path' and 'elevation', got {type(entry).__name__}")
    paths = entry.get("image_path")
    if not isinstance(paths, (list, tuple)) or not paths or not all(isinstance(p, str) for p in paths):
        raise DatasetError(f"{where}: 'image_path' must be a non-empty list of path strings")
    if "elevation" not in entry:
        raise DatasetError(f"{where}: missing key 'elevation' (one value in degrees per image)")
    elev = _numbers(entry["elevation"], where, "elevation", len(paths))
    azim = _numbers(entry["azimuth"], where, "azimuth", len(paths)) if "azimuth" in entry else evenly_spaced_azimuths(len(paths))
    full = [p if os.path.isabs(p) else os.path.join(image_root, p) for p in paths]
    name = os.path.dirname(paths[0]) or f"line{lineno}"
    return OrbitObject(name, [OrbitRing(full, elev, azim)])


def _image_files(folder: str) -> List[str]:
    return sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))


def read_hi3d_folders(root: str, elevations: Sequence[float] = HI3D_ELEVATIONS, views_per_ring: int = 16,
                      errors: Optional[List[str]] = None) -> List[OrbitObject]:
    """Hi3D object folders: len(elevations) x views_per_ring images each, ring by ring in sorted file order."""
    base = os.path.join(root, "images") if os.path.isdir(os.path.join(root, "images")) else root
    if not os.path.isdir(base):
        raise DatasetError(f"dataset root {root!r} is not a folder (data.root)")
    need = len(elevations) * int(views_per_ring)
    objects = []
    for uid in sorted(os.listdir(base)):
        folder = os.path.join(base, uid)
        if not os.path.isdir(folder):
            continue
        files = _image_files(folder)
        if len(files) != need:
            msg = (
                f"{folder}: {len(files)} images, expected {need} = {len(elevations)} elevations x {views_per_ring} views "
                "(data.hi3d_elevations, data.hi3d_views_per_ring)"
            )
            if errors is None:
                raise DatasetError(msg)
            errors.append(msg)
            continue
        rings = []
        for k, e in enumerate(elevations):
            chunk = files[k * views_per_ring : (k + 1) * views_per_ring]
            rings.append(OrbitRing([os.path.join(folder, f) for f in chunk], [float(e)] * views_per_ring, evenly_spaced_azimuths(views_per_ring)))
        objects.append(OrbitObject(uid, rings))
    if not objects and not errors:
        raise DatasetError(f"{base}: no object folders")
    return objects


def camera_angles_deg(c2w: np.ndarray) -> tuple:
    """(elevation, azimuth) in degrees of a camera-to-world matrix's position in the z-up world."""
    x, y, z = (float(v) for v in np.asarray(c2w, dtype=np.float64)[:3, 3])
    r = math.sqrt(x * x + y * y + z * z)
    if r < 1e-9:
        raise ValueError("camera at the origin")
    return math.degrees(math.asin(max(-1.0, min(1.0, z / r)))), math.degrees(math.atan2(y, x)) % 360.0


def _resolve_frame_path(folder: str, file_path: str) -> str:
    path = os.path.normpath(os.path.join(folder, file_path))
    if os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS or os.path.isfile(path):
        return path
    for ext in IMAGE_EXTENSIONS:  # NeRF-synthetic files often omit the extension
        if os.path.isfile(path + ext):
            return path + ext
    return path + ".png"


def read_transforms_orbit(path: str) -> OrbitObject:
    """One `transforms.json` orbit (frames in file order form one ring)."""
    folder = os.path.dirname(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    frames = data.get("frames") if isinstance(data, dict) else None
    if not isinstance(frames, list) or not frames:
        raise DatasetError(f"{path}: needs a non-empty 'frames' list")
    paths, elev, azim = [], [], []
    for i, fr in enumerate(frames):
        if not isinstance(fr, dict) or "file_path" not in fr or "transform_matrix" not in fr:
            raise DatasetError(f"{path}: frames[{i}] needs 'file_path' and 'transform_matrix'")
        try:
            m = np.asarray(fr["transform_matrix"], dtype=np.float64)
            if m.shape not in ((4, 4), (3, 4)):
                raise ValueError(f"shape {m.shape}")
            e, a = camera_angles_deg(m)
        except (ValueError, TypeError) as exc:
            raise DatasetError(f"{path}: frames[{i}].transform_matrix is not a camera-to-world matrix ({exc})") from None
        paths.append(_resolve_frame_path(folder, str(fr["file_path"])))
        elev.append(e)
        azim.append(a)
    return OrbitObject(os.path.basename(folder.rstrip(os.sep)) or folder, [OrbitRing(paths, elev, azim)])


def read_transforms_orbits(root: str, errors: Optional[List[str]] = None) -> List[OrbitObject]:
    if os.path.isfile(os.path.join(root, "transforms.json")):
        found = [os.path.join(root, "transforms.json")]
    elif not os.path.isdir(root):
        raise DatasetError(f"dataset root {root!r} is not a folder (data.root)")
    else:
        found = [p for p in (os.path.join(root, d, "transforms.json") for d in sorted(os.listdir(root))) if os.path.isfile(p)]
    objects = []
    for p in found:
        try:
            objects.append(read_transforms_orbit(p))
        except DatasetError as exc:
            if errors is None:
                raise
            errors.append(str(exc))
    if not objects and not errors:
        raise DatasetError(f"{root}: no transforms.json in it or in its sub-folders")
    return objects


def detect_format(root: str, meta: Optional[str]) -> str:
    if meta:
        return "svd_meta"
    if os.path.isfile(os.path.join(root, "svd_meta.jsonl")):
        return "svd_meta"
    if os.path.isfile(os.path.join(root, "transforms.json")) or (
        os.path.isdir(root) and any(os.path.isfile(os.path.join(root, d, "transforms.json")) for d in os.listdir(root))
    ):
        return "transforms"
    return "hi3d"


def read_dataset(
    root: str,
    fmt: str = "auto",
    meta: Optional[str] = None,
    hi3d_elevations: Sequence[float] = HI3D_ELEVATIONS,
    hi3d_views_per_ring: int = 16,
    errors: Optional[List[str]] = None,
) -> List[OrbitObject]:
    """The objects of a dataset in any of the supported formats (see the module docstring). With an `errors` list,
    malformed entries are reported there (and skipped) instead of raising at the first one."""
    if fmt not in FORMATS:
        raise DatasetError(f"data.format {fmt!r} is not one of {', '.join(FORMATS)}")
    if fmt == "auto":
        fmt = detect_format(root, meta)
    if fmt == "svd_meta":
        return read_svd_meta(meta or os.path.join(root, "svd_meta.jsonl"), root, errors)
    if fmt == "hi3d":
        return read_hi3d_folders(root, hi3d_elevations, hi3d_views_per_ring, errors)
    return read_transforms_orbits(root, errors)
