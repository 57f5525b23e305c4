"""Reading a views x frames image matrix from disk: one NeRF / instant-ngp transforms file per frame.

Two layouts are recognised in a folder DIR:
- Diffusion² (what `diffusion2.sample` writes): `DIR/transforms_frame_YY.json`, images
  `view_XX/frame_YY.png` relative to DIR;
- per-frame: `DIR/frame_YY/transforms.json` with its images beside it (any names the json gives).
Each file is parsed by `multiview_sources.load_transforms` (cameras: z-up world, OpenGL camera axes,
c2w). A top-level `"time"` in [0, 1] gives the frame's time, else YY / max(YY). Every frame must list the
same number of views (view i of every frame is the same camera slot). RGB images without alpha are keyed
on a flat background (SV3D / SVD outputs are RGB on white). Problems raise `DatasetError` naming the file.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from threestudio.data.multiview_sources import DatasetError, load_transforms

DIFFUSION2_PATTERN = re.compile(r"^transforms_frame_(\d+)\.json$")
FRAME_DIR_PATTERN = re.compile(r"^frame_(\d+)$")


@dataclass
class FrameMatrix:
    """F frames x V views. rgb: (F,V,H,W,3) uint8 straight colour; mask: (F,V,H,W,1) uint8; c2w: (F,V,4,4);
    intrinsics: (F,V,4) fx, fy, cx, cy in pixels; times: (F,) in [0, 1]; frame_ids: the YY of each frame;
    names[f][v]: the image path."""

    rgb: Tensor
    mask: Tensor
    c2w: Tensor
    intrinsics: Tensor
    times: Tensor
    frame_ids: list
    names: list
    layout: str

    @property
    def n_frames(self) -> int:
        return self.rgb.shape[0]

    @property
    def n_views(self) -> int:
        return self.rgb.shape[1]

    @property
    def height(self) -> int:
        return self.rgb.shape[2]

    @property
    def width(self) -> int:
        return self.rgb.shape[3]

    def image(self, frame: int, view: int) -> tuple[Tensor, Tensor]:
        """(H,W,3) colour and (H,W,1) mask of one (frame, view) as floats in [0, 1]."""
        return self.rgb[frame, view].float() / 255.0, self.mask[frame, view].float() / 255.0


def find_frame_files(dataroot: str) -> tuple[str, list[tuple[int, str]]]:
    """The layout name and the (YY, transforms path) of every frame, ordered by YY."""
    if not os.path.isdir(dataroot):
        raise DatasetError(f"Data root '{dataroot}' is not a folder of per-frame transforms files.")
    names = sorted(os.listdir(dataroot))
    diffusion2 = [(int(m.group(1)), os.path.join(dataroot, n)) for n in names if (m := DIFFUSION2_PATTERN.match(n))]
    frame_dirs = [(int(m.group(1)), os.path.join(dataroot, n)) for n in names
                  if (m := FRAME_DIR_PATTERN.match(n)) and os.path.isdir(os.path.join(dataroot, n))]
    if diffusion2 and frame_dirs:
        raise DatasetError(f"'{dataroot}' mixes transforms_frame_YY.json files and frame_YY/ folders; keep one layout.")
    if diffusion2:
        layout, files = "diffusion2", diffusion2
    elif frame_dirs:
        files = []
        for index, folder in frame_dirs:
            path = os.path.join(folder, "transforms.json")
            if not os.path.isfile(path):
                raise DatasetError(f"Frame folder '{folder}' has no transforms.json.")
            files.append((index, path))
        layout = "per-frame"
    else:
        raise DatasetError(f"No frames in '{dataroot}': expected transforms_frame_YY.json files (Diffusion² layout, "
                           "images view_XX/frame_YY.png) or frame_YY/transforms.json folders.")
    files.sort()
    ids = [i for i, _ in files]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DatasetError(f"'{dataroot}' has two transforms files for frame {dup}.")
    return layout, files


def frame_time(path: str, index: int, max_index: int) -> float:
    """The frame's `time` key, else index / max_index."""
    try:
        with open(path) as fp:
            meta = json.load(fp)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path} is not valid JSON: {e}") from None
    if isinstance(meta, dict) and "time" in meta:
        try:
            t = float(meta["time"])
        except (TypeError, ValueError):
            raise DatasetError(f"{path}: 'time' must be a number in [0, 1], got {meta['time']!r}.") from None
        if not 0.0 <= t <= 1.0:
            raise DatasetError(f"{path}: 'time' must be in [0, 1], got {t}.")
        return t
    return index / max_index if max_index > 0 else 0.0


def load_frame_matrix(dataroot: str, key_background: Optional[str] = "white", key_threshold: float = 0.02,
                      height: Optional[int] = None, width: Optional[int] = None) -> FrameMatrix:
    """Read every frame of `dataroot` (optionally resized to height x width) into a `FrameMatrix`."""
    layout, files = find_frame_files(dataroot)
    max_index = max(i for i, _ in files)
    rgbs, masks, c2ws, intrs, times, names = [], [], [], [], [], []
    first_path, n_views, size = None, None, None
    for index, path in files:
        times.append(frame_time(path, index, max_index))
        views = load_transforms(path, None, key_background, key_threshold)
        if height is not None and width is not None:
            views = views.resized(height, width)
        if n_views is None:
            first_path, n_views, size = path, len(views), (views.height, views.width)
        elif len(views) != n_views:
            raise DatasetError(f"{path} lists {len(views)} views but {first_path} lists {n_views}: every frame "
                               "must list the same views in the same order.")
        elif (views.height, views.width) != size:
            raise DatasetError(f"{path}: images are {views.width}x{views.height} but those of {first_path} are "
                               f"{size[1]}x{size[0]}; set data.height and data.width to resize them all.")
        rgbs.append((views.images * 255.0 + 0.5).clamp(0, 255).to(torch.uint8))
        masks.append((views.masks * 255.0 + 0.5).clamp(0, 255).to(torch.uint8))
        c2ws.append(views.c2w), intrs.append(views.intrinsics), names.append(list(views.names))
    order = sorted(range(len(times)), key=lambda i: times[i])
    if order != list(range(len(times))):
        raise DatasetError(f"'{dataroot}': frame times {times} do not increase with the frame numbers.")
    return FrameMatrix(torch.stack(rgbs), torch.stack(masks), torch.stack(c2ws), torch.stack(intrs),
                       torch.tensor(times, dtype=torch.float32), [i for i, _ in files], names, layout)
