"""`multiview-video-datamodule`: a views x frames image matrix (synchronised cameras over time) for 4D
reconstruction.

Training batches are random rays from random training (view, frame) pairs: `frames_per_batch` frames per
step, the same number of rays from each, shaped (1, N, 1, 3) with the time of every ray in `times`
(1, N, 1, 1), grouped by frame (the system renders each group at its time). Views listed in
`holdout_views` and frames listed in `holdout_frames` (positions 0..F-1) are never trained on; every
(view, frame) pair with a held-out view or frame is an evaluation pair. Validation renders a grid of
views x frames; test renders the held-out pairs (PSNR), a 4D orbit (the camera turns while time runs) and
a fixed-view clip over a time range. Readers and layouts: `multiview_video_sources.py`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch.utils.data import ConcatDataset, Dataset

import threestudio
from threestudio.data.base import CameraDataModule, StepIndexedIterableDataset
from threestudio.data.camera_sampling import orbit_cameras
from threestudio.data.multiview_images import BACKGROUNDS, background_color
from threestudio.data.multiview_video_sources import FrameMatrix, load_frame_matrix
from threestudio.utils.config import ConfigError
from threestudio.utils.misc import step_seed
from threestudio.utils.ops import get_ray_directions, get_rays


@dataclass
class MultiviewVideoDataModuleConfig:
    # a folder in the Diffusion² layout (transforms_frame_YY.json) or the per-frame layout (frame_YY/transforms.json)
    dataroot: str = "???"
    # RGB images without alpha: the flat background colour to key out (white | black | null: all pixels object)
    key_background: Optional[str] = "white"
    key_threshold: float = 0.02
    height: Optional[int] = None
    width: Optional[int] = None
    # views (positions in each frame's list) and frames (positions 0..F-1) left out of training
    holdout_views: list = field(default_factory=list)
    holdout_frames: list = field(default_factory=list)
    batch_size: int = 4096
    frames_per_batch: int = 4
    background: str = "random"  # white | black | random
    eval_background: str = "white"
    # validation grid: this many views (held-out ones first) x frames (evenly spaced)
    n_val_views: int = 2
    n_val_frames: int = 4
    # test: held-out pairs with ground truth (PSNR), then the 4D orbit, then the fixed-view clip
    test_heldout: bool = True
    n_test_views: int = 60
    # the orbit and the fixed-view clip play this time range
    test_time_range: list = field(default_factory=lambda: [0.0, 1.0])
    n_test_fixed_frames: int = 30
    test_fixed_azimuth_deg: float = 0.0
    eval_height: Optional[int] = None
    eval_width: Optional[int] = None
    eval_elevation_deg: float = 15.0
    eval_camera_distance: Optional[float] = None  # default: mean training camera distance
    eval_fovy_deg: Optional[float] = None  # default: mean training field of view


def pixel_rays(c2w: torch.Tensor, intrinsics: torch.Tensor, rows: torch.Tensor,
               cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """World rays (N,3) through pixel centres (rows, cols) of cameras c2w (N,4,4), intrinsics (N,4);
    the same convention as `get_ray_directions` + `get_rays`."""
    fx, fy, cx, cy = intrinsics.unbind(-1)
    dirs = torch.stack([(cols + 0.5 - cx) / fx, -(rows + 0.5 - cy) / fy, -torch.ones_like(fx)], dim=-1)
    rays_d = F.normalize(torch.einsum("nc,ndc->nd", dirs, c2w[:, :3, :3]), dim=-1)
    return c2w[:, :3, 3].contiguous(), rays_d


class RandomFrameRayDataset(StepIndexedIterableDataset):
    """Endless batches of rays from the training pairs; the batch of step s depends only on (seed, s)."""

    def __init__(self, data: FrameMatrix, train_views: list, train_frames: list, batch_size: int,
                 frames_per_batch: int, background: str, seed: int, start_step: Callable[[], int]) -> None:
        super().__init__(start_step)
        self.data = data
        self.views = torch.tensor(train_views, dtype=torch.long)
        self.frames = torch.tensor(train_frames, dtype=torch.long)
        self.k = max(1, min(frames_per_batch, len(train_frames)))
        self.rays_per_frame = max(1, batch_size // self.k)
        self.background = background
        self.seed = seed

    def batch_at(self, step: int) -> dict:
        gen = torch.Generator().manual_seed(step_seed(self.seed, step, "rays"))
        d = self.data
        frames = self.frames[torch.randperm(len(self.frames), generator=gen)[:self.k]].sort().values
        n = self.rays_per_frame
        frame = frames.repeat_interleave(n)
        view = self.views[torch.randint(0, len(self.views), (len(frame),), generator=gen)]
        rows = torch.randint(0, d.height, (len(frame),), generator=gen)
        cols = torch.randint(0, d.width, (len(frame),), generator=gen)
        rays_o, rays_d = pixel_rays(d.c2w[frame, view], d.intrinsics[frame, view], rows.float(), cols.float())
        total = len(frame)
        if self.background == "random":
            bg = torch.rand(total, 3, generator=gen)
        else:
            bg = background_color(self.background).expand(total, 3)
        mask = d.mask[frame, view, rows, cols].float() / 255.0
        rgb = (d.rgb[frame, view, rows, cols].float() / 255.0) * mask + bg * (1 - mask)

        def rays(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(1, total, 1, -1)

        return {"rays_o": rays(rays_o), "rays_d": rays(rays_d), "rgb": rays(rgb), "mask": rays(mask),
                "bg_color": rays(bg), "times": rays(d.times[frame]), "frame": frame,
                "light_positions": rays_o[:1], "height": total, "width": 1}


class FramePairDataset(Dataset):
    """Whole (frame, view) images with ground truth on the evaluation background; `kind` names the set."""

    def __init__(self, data: FrameMatrix, pairs: list, background: str, kind: str,
                 holdout_views: tuple = (), holdout_frames: tuple = ()) -> None:
        self.data, self.pairs, self.kind = data, pairs, kind
        self.holdout_views, self.holdout_frames = set(holdout_views), set(holdout_frames)
        self.bg = background_color(background)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        d = self.data
        frame, view = self.pairs[index]
        fx, fy, cx, cy = d.intrinsics[frame, view].tolist()
        c2w = d.c2w[frame, view][None]
        rays_o, rays_d = get_rays(get_ray_directions(d.height, d.width, (fx, fy), (cx, cy)), c2w)
        rgb, mask = d.image(frame, view)
        return {"index": torch.tensor([index]), "kind": self.kind, "frame": frame, "view": view,
                "heldout_view": view in self.holdout_views, "heldout_frame": frame in self.holdout_frames,
                "time": d.times[frame].reshape(1), "rays_o": rays_o, "rays_d": rays_d,
                "rgb": (rgb * mask + self.bg * (1 - mask))[None], "mask": mask[None], "bg_color": self.bg,
                "c2w": c2w, "light_positions": c2w[:, :3, 3], "height": d.height, "width": d.width}


class TimedOrbitDataset(Dataset):
    """Rendered-only cameras at given azimuths and times (the 4D orbit, the fixed-view clip)."""

    def __init__(self, azimuths: list, times: list, kind: str, background: str, **orbit: Any) -> None:
        self.azimuths, self.times, self.kind, self.orbit = azimuths, times, kind, orbit
        self.bg = background_color(background)

    def __len__(self) -> int:
        return len(self.times)

    def __getitem__(self, index: int) -> dict:
        batch = orbit_cameras(1, azimuth_start=self.azimuths[index], **self.orbit)
        batch.update({"index": torch.tensor([index]), "kind": self.kind, "time": torch.tensor([self.times[index]]),
                      "bg_color": self.bg})
        return batch


class FrameListDataset(Dataset):
    """One item per frame (index and time): what export iterates over."""

    def __init__(self, data: FrameMatrix) -> None:
        self.data = data

    def __len__(self) -> int:
        return self.data.n_frames

    def __getitem__(self, index: int) -> dict:
        return {"index": torch.tensor([index]), "kind": "frame", "frame": index,
                "frame_id": self.data.frame_ids[index], "time": self.data.times[index].reshape(1)}


@threestudio.register("multiview-video-datamodule")
class MultiviewVideoDataModule(CameraDataModule):
    Config = MultiviewVideoDataModuleConfig

    def __init__(self, cfg: Optional[Any] = None, config_path: str = "data") -> None:
        super().__init__(cfg, config_path)
        c = self.cfg
        if c.background not in BACKGROUNDS:
            raise ConfigError(f"{config_path}.background: '{c.background}' is not one of {BACKGROUNDS}.")
        if c.eval_background not in BACKGROUNDS[:2]:
            raise ConfigError(f"{config_path}.eval_background: '{c.eval_background}' is not one of {BACKGROUNDS[:2]}.")
        if c.key_background not in (None, "white", "black"):
            raise ConfigError(f"{config_path}.key_background must be white, black or null, got '{c.key_background}'.")
        if (c.height is None) != (c.width is None):
            raise ConfigError(f"{config_path}.height and width must be given together.")
        if len(c.test_time_range) != 2 or not 0.0 <= c.test_time_range[0] <= c.test_time_range[1] <= 1.0:
            raise ConfigError(f"{config_path}.test_time_range must be [t0, t1] with 0 <= t0 <= t1 <= 1, "
                              f"got {list(c.test_time_range)}.")
        if c.dataroot in ("???", ""):
            raise ConfigError(f"{config_path}.dataroot is required: a folder of per-frame transforms files.")
        self.data = load_frame_matrix(c.dataroot, c.key_background, c.key_threshold, c.height, c.width)
        self.holdout_views = self._positions("holdout_views", self.data.n_views)
        self.holdout_frames = self._positions("holdout_frames", self.data.n_frames)
        self.train_views = [v for v in range(self.data.n_views) if v not in self.holdout_views]
        self.train_frames = [f for f in range(self.data.n_frames) if f not in self.holdout_frames]
        if not self.train_views or not self.train_frames:
            raise ConfigError(f"{config_path}.holdout_views / holdout_frames leave nothing to train on.")

    def _positions(self, key: str, n: int) -> list:
        values = [int(v) for v in getattr(self.cfg, key)]
        bad = [v for v in values if not 0 <= v < n]
        if bad:
            raise ConfigError(f"{self.config_path}.{key}: {bad} out of range; '{self.cfg.dataroot}' has {n} "
                              f"{'views' if 'view' in key else 'frames'} (positions 0..{n - 1}).")
        return sorted(set(values))

    # ------------------------------------------------------------------ pairs
    def heldout_pairs(self) -> list:
        """(frame, view) pairs with a held-out view or frame."""
        return [(f, v) for f in range(self.data.n_frames) for v in range(self.data.n_views)
                if f in self.holdout_frames or v in self.holdout_views]

    def validation_pairs(self) -> list:
        c, d = self.cfg, self.data
        views = (self.holdout_views + self.train_views)[:max(1, c.n_val_views)]
        n_f = max(1, min(c.n_val_frames, d.n_frames))
        frames = sorted({round(i * (d.n_frames - 1) / max(1, n_f - 1)) for i in range(n_f)})
        return [(f, v) for v in views for f in frames]

    def orbit_defaults(self) -> dict:
        c, d = self.cfg, self.data
        distance = c.eval_camera_distance or float(d.c2w[..., :3, 3].norm(dim=-1).mean())
        fovy = c.eval_fovy_deg or float(torch.rad2deg(2 * torch.atan(0.5 * d.height / d.intrinsics[..., 1])).mean())
        return dict(elevation_deg=c.eval_elevation_deg, distance=distance, fovy_deg=fovy,
                    height=c.eval_height or d.height, width=c.eval_width or d.width)

    # ------------------------------------------------------------------ lightning
    def setup(self, stage: Optional[str] = None) -> None:
        c = self.cfg
        if stage in (None, "fit"):
            self.train_dataset = RandomFrameRayDataset(self.data, self.train_views, self.train_frames, c.batch_size,
                                                       c.frames_per_batch, c.background, self.seed(), self.start_step)
        held = dict(holdout_views=self.holdout_views, holdout_frames=self.holdout_frames)
        self.val_dataset = FramePairDataset(self.data, self.validation_pairs(), c.eval_background, "val", **held)
        t0, t1 = c.test_time_range
        n = max(1, c.n_test_views)
        orbit_times = [t0 + (t1 - t0) * i / max(1, n - 1) for i in range(n)]
        m = max(1, c.n_test_fixed_frames)
        parts: list[Dataset] = []
        if c.test_heldout and self.heldout_pairs():
            parts.append(FramePairDataset(self.data, self.heldout_pairs(), c.eval_background, "heldout", **held))
        parts.append(TimedOrbitDataset([i * 360.0 / n for i in range(n)], orbit_times, "orbit", c.eval_background,
                                       **self.orbit_defaults()))
        parts.append(TimedOrbitDataset([c.test_fixed_azimuth_deg] * m,
                                       [t0 + (t1 - t0) * i / max(1, m - 1) for i in range(m)], "fixed",
                                       c.eval_background, **self.orbit_defaults()))
        self.test_dataset = ConcatDataset(parts)

    def predict_dataset(self) -> Dataset:
        return FrameListDataset(self.data)
