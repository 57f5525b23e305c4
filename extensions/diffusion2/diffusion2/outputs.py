"""The output folder, as the reference writes it, plus per-frame cameras for the 4D reconstruction:

    OUT/view_{XX}/frame_{YY}.png, OUT/view_{XX}/frame_all.mp4   decoded matrix, one folder per view
    OUT/ref_multiview.mp4, OUT/ref_video.mp4                    the two references
    OUT/preview.mp4                                             frame t seen from view min(t, V - 1)
    OUT/transforms_frame_{YY}.json                              the V cameras of frame YY (NeRF / instant-ngp
                                                                layout, z-up, OpenGL axes, c2w), "time" and
                                                                "frame_index" at top level
"""

from __future__ import annotations

import os
from typing import List, Sequence

import imageio
import numpy as np
import torch
from sv3d import write_transforms_json
from sv3d.cameras import SV3D_CAMERA_DISTANCE, SV3D_FOV_DEG

OUTPUT_MARKERS = ("view_00", "preview.mp4", "ref_multiview.mp4", "ref_video.mp4", "transforms_frame_00.json")


def check_output_dir(out: str, overwrite: bool = False) -> None:
    """Refuse to write over an earlier result (nothing the user made is overwritten) unless asked to."""
    if os.path.isfile(out):
        raise ValueError(f"--out {out!r} is a file; give a folder")
    if not overwrite and os.path.isdir(out):
        found = [m for m in OUTPUT_MARKERS if os.path.exists(os.path.join(out, m))]
        if found:
            raise ValueError(f"--out {out!r} already holds a Diffusion² result ({found[0]}); pick another folder or pass --overwrite")


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [0, 1] -> (N, H, W, 3) uint8."""
    return (frames.clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)


def write_video(path: str, frames: np.ndarray, fps: int = 6) -> None:
    imageio.mimwrite(path, list(frames), fps=fps, macro_block_size=1)


def write_view(out: str, view: int, frames: torch.Tensor, fps: int = 6) -> List[str]:
    """view_{XX}/frame_{YY}.png and frame_all.mp4 of one view's decoded frames (F, 3, H, W) in [0, 1]."""
    folder = os.path.join(out, f"view_{view:02d}")
    os.makedirs(folder, exist_ok=True)
    video = to_uint8(frames)
    paths = []
    for t, img in enumerate(video):
        paths.append(os.path.join(folder, f"frame_{t:02d}.png"))
        imageio.imwrite(paths[-1], img)
    write_video(os.path.join(folder, "frame_all.mp4"), video, fps)
    return paths


def write_preview(out: str, num_views: int, num_frames: int, fps: int = 6) -> str:
    """preview.mp4 from the written frames: frame t from view min(t, V - 1) (the camera sweeps while time runs)."""
    frames = [imageio.imread(os.path.join(out, f"view_{min(t, num_views - 1):02d}", f"frame_{t:02d}.png")) for t in range(num_frames)]
    path = os.path.join(out, "preview.mp4")
    write_video(path, np.stack(frames), fps)
    return path


def write_frame_transforms(
    out: str,
    num_frames: int,
    elevations_deg: Sequence[float],
    azimuths_deg: Sequence[float],
    size: int,
    fov_deg: float = SV3D_FOV_DEG,
    distance: float = SV3D_CAMERA_DISTANCE,
) -> List[str]:
    """transforms_frame_{YY}.json for every frame YY: the orbit's V cameras with file paths view_{XX}/frame_{YY}.png
    (relative to `out`), plus "time" = YY / (F - 1) and "frame_index" = YY."""
    paths = []
    for t in range(num_frames):
        files = [f"view_{v:02d}/frame_{t:02d}.png" for v in range(len(azimuths_deg))]
        path = os.path.join(out, f"transforms_frame_{t:02d}.json")
        extra = {"time": t / (num_frames - 1) if num_frames > 1 else 0.0, "frame_index": t}
        write_transforms_json(path, files, elevations_deg, azimuths_deg, fov_deg, distance, size, size, extra=extra)
        paths.append(path)
    return paths
