"""`single-image-datamodule`: one input image at its camera, plus an SV3D orbit of cameras around the object.

Training batch (one per step): the reference view's camera and rays with its ground truth, `rgb` (1, H, W, 3)
composited on white and `mask` (1, H, W, 1), as SV3D's preprocessing makes them (crop to the alpha box, centre,
`image_frame_ratio`, 576, white), and `orbit`: the N orbit cameras (SV3D order: frame i at azimuth
(i + 1)·360/N relative to the input view, the last frame is the input view) at the input's elevation, with
`azimuth_relative` (N,). Conventions: docs/architecture.md §3. The optional azimuth jitter of the orbit (for sv3d_p) is
drawn per step from (seed, step), so a resumed run sees the same cameras as an uninterrupted one.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

import threestudio
from threestudio.data.base import CameraDataModule, OrbitViewDataset, StepIndexedIterableDataset
from threestudio.data.camera_sampling import camera_batch, orbit_cameras
from threestudio.data.multiview_sources import orbit_azimuths
from threestudio.utils.config import ConfigError, require_positive
from threestudio.utils.misc import step_seed
from threestudio.utils.ops import camera_positions_from_spherical, look_at_c2w


@dataclass
class SingleImageDataModuleConfig:
    image_path: str = "???"  # RGBA image, alpha = object mask
    image_frame_ratio: Optional[float] = None  # object box / frame side, as SV3D's preprocessing
    # resolution of the reference view in training
    height: int = 64
    width: int = 64
    # the input view's camera (SV3D renders: distance 2, fovy 33.8°)
    default_elevation_deg: float = 10.0
    default_azimuth_deg: float = 0.0
    default_camera_distance: float = 2.0
    default_fovy_deg: float = 33.8
    # the orbit rendered for SDS every step
    orbit_n_frames: int = 21
    orbit_height: int = 64
    orbit_width: int = 64
    orbit_camera_distance: Optional[float] = None  # default: the input view's
    orbit_fovy_deg: Optional[float] = None  # default: the input view's
    # uniform jitter (degrees) of every frame's azimuth but the last (the input view); for sv3d_p only
    orbit_azimuth_jitter_deg: float = 0.0
    # evaluation: views on an orbit at eval_elevation_deg starting at the input view
    eval_height: int = 256
    eval_width: int = 256
    eval_elevation_deg: Optional[float] = None  # default: the input view's
    eval_camera_distance: Optional[float] = None
    eval_fovy_deg: Optional[float] = None
    n_val_views: int = 4
    n_test_views: int = 120


def load_reference_image(path: str, size: int = 576, image_frame_ratio: Optional[float] = None,
                         where: str = "data.image_path") -> tuple[Tensor, Tensor]:
    """The input image through SV3D's preprocessing: (size, size, 3) on white and its (size, size, 1) mask in [0, 1]."""
    from PIL import Image
    from sv3d import preprocess_orbit_image

    if not os.path.isfile(path):
        raise ConfigError(f"{where}: image '{path}' does not exist.")
    try:
        with Image.open(path) as im:
            im.load()
            image = im.copy()
    except (OSError, SyntaxError, ValueError) as e:  # PIL's UnidentifiedImageError is an OSError
        raise ConfigError(f"{where}: '{path}' is not a readable image ({type(e).__name__}: {e}). "
                          "Give an RGBA PNG whose alpha is the object mask.") from None
    try:
        rgb = preprocess_orbit_image(image, image_frame_ratio, size)
        rgba = image.convert("RGBA")
        # the same preprocessing of a black image with the same alpha composites to 1 - alpha on white:
        # the mask goes through exactly the crop, centring and resampling of the colours
        black = Image.fromarray(np.concatenate(
            [np.zeros((*rgba.size[::-1], 3), np.uint8), np.asarray(rgba)[..., 3:]], axis=-1), "RGBA")
        inv = preprocess_orbit_image(black, image_frame_ratio, size)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None
    rgb_t = torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0)
    mask = 1.0 - torch.from_numpy(np.asarray(inv, dtype=np.float32)[..., :1] / 255.0)
    return rgb_t, mask


def resize_image(img: Tensor, height: int, width: int) -> Tensor:
    """(H, W, C) -> (height, width, C), area-correct when shrinking (compositing on white commutes with it)."""
    if img.shape[:2] == (height, width):
        return img
    x = img.permute(2, 0, 1)[None]
    x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False,
                      antialias=height < img.shape[0] or width < img.shape[1])
    return x[0].permute(1, 2, 0).clamp(0, 1)


def orbit_camera_batch(n_frames: int, elevation_deg: float, input_azimuth_deg: float, distance: float,
                       fovy_deg: float, height: int, width: int, jitter_deg: float = 0.0,
                       gen: Optional[torch.Generator] = None) -> dict:
    """SV3D orbit cameras (frame i at (i + 1)·360/N relative to the input view; last = input view)."""
    relative = orbit_azimuths(n_frames)
    if jitter_deg > 0:
        noise = (torch.rand(n_frames, generator=gen) * 2 - 1) * jitter_deg
        noise[-1] = 0.0
        relative = relative + noise
        # keep frames 0..N-2 in increasing azimuth, as sv3d_p was trained (the reference sorts them too)
        relative[:-1] = relative[:-1].sort().values
    relative = torch.remainder(relative, 360.0)
    azimuth = relative + input_azimuth_deg
    elevation = torch.full((n_frames,), float(elevation_deg))
    distances = torch.full((n_frames,), float(distance))
    fovy = torch.full((n_frames,), float(fovy_deg))
    positions = camera_positions_from_spherical(elevation, azimuth, distances)
    batch = camera_batch(look_at_c2w(positions), fovy, height, width, positions.clone(), elevation, azimuth, distances)
    batch["azimuth_relative"] = relative
    return batch


class SingleImageIterableDataset(StepIndexedIterableDataset):
    """Endless training batches: the reference view (fixed) and the orbit (jittered per step when asked)."""

    def __init__(self, reference: dict, orbit_args: dict, jitter_deg: float, seed: int,
                 start_step: Callable[[], int]) -> None:
        super().__init__(start_step)
        self.reference = reference
        self.orbit_args = orbit_args
        self.jitter_deg = jitter_deg
        self.seed = seed
        self.fixed_orbit = orbit_camera_batch(**orbit_args) if jitter_deg <= 0 else None

    def batch_at(self, step: int) -> dict:
        if self.fixed_orbit is not None:
            orbit = self.fixed_orbit
        else:
            gen = torch.Generator().manual_seed(step_seed(self.seed, step, "orbit"))
            orbit = orbit_camera_batch(**self.orbit_args, jitter_deg=self.jitter_deg, gen=gen)
        return {**self.reference, "orbit": orbit}


@threestudio.register("single-image-datamodule")
class SingleImageDataModule(CameraDataModule):
    Config = SingleImageDataModuleConfig

    def __init__(self, cfg: Optional[Any] = None, config_path: str = "data") -> None:
        super().__init__(cfg, config_path)
        c = self.cfg
        if c.image_path in ("???", ""):
            raise ConfigError(f"{config_path}.image_path is required: an RGBA image whose alpha is the object mask.")
        for key in ("height", "width", "orbit_height", "orbit_width", "eval_height", "eval_width", "orbit_n_frames",
                    "n_test_views"):
            require_positive(getattr(c, key), f"{config_path}.{key}")
        require_positive(c.n_val_views, f"{config_path}.n_val_views", allow_zero=True)
        self.image_576, self.mask_576 = load_reference_image(c.image_path, 576, c.image_frame_ratio,
                                                             where=f"{config_path}.image_path")
        self.reference = self._reference_batch()

    def _reference_batch(self) -> dict:
        c = self.cfg
        batch = orbit_cameras(1, c.default_elevation_deg, c.default_camera_distance, c.default_fovy_deg, c.height,
                              c.width, azimuth_start=c.default_azimuth_deg)
        batch["rgb"] = resize_image(self.image_576, c.height, c.width)[None]
        batch["mask"] = resize_image(self.mask_576, c.height, c.width)[None]
        return batch

    def orbit_args(self) -> dict:
        c = self.cfg
        return dict(n_frames=c.orbit_n_frames, elevation_deg=c.default_elevation_deg,
                    input_azimuth_deg=c.default_azimuth_deg,
                    distance=c.orbit_camera_distance or c.default_camera_distance,
                    fovy_deg=c.orbit_fovy_deg or c.default_fovy_deg, height=c.orbit_height, width=c.orbit_width)

    def _eval_orbit(self, n_views: int) -> OrbitViewDataset:
        """Evaluation views start at the input view."""
        c = self.cfg
        elevation = c.default_elevation_deg if c.eval_elevation_deg is None else c.eval_elevation_deg
        return OrbitViewDataset(n_views, elevation, c.eval_camera_distance or c.default_camera_distance,
                                c.eval_fovy_deg or c.default_fovy_deg, c.eval_height, c.eval_width,
                                azimuth_start=c.default_azimuth_deg)

    def setup(self, stage: Optional[str] = None) -> None:
        self.train_dataset = SingleImageIterableDataset(self.reference, self.orbit_args(),
                                                        self.cfg.orbit_azimuth_jitter_deg, self.seed(),
                                                        self.start_step)
        self.val_dataset = self._eval_orbit(self.cfg.n_val_views)
        self.test_dataset = self._eval_orbit(self.cfg.n_test_views)
