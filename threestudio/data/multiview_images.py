"""`multiview-image-datamodule`: posed images (transforms json or an orbit video) for reconstruction.

Training batches are random rays drawn from all training pixels, shaped as a (1, N, 1, 3) "image" so the
renderer takes them like any view; validation and test batches are whole views (test may instead be a
120-frame orbit for the video). Conventions: docs/architecture.md §3.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import Tensor
from torch.utils.data import Dataset

import threestudio
from threestudio.data.base import CameraDataModule, OrbitViewDataset, StepIndexedIterableDataset
from threestudio.data.multiview_sources import (
    VIDEO_EXTENSIONS,
    DatasetError,
    ViewSet,
    load_orbit,
    load_transforms,
    transforms_files,
)
from threestudio.utils.config import ConfigError, require_positive
from threestudio.utils.misc import step_seed
from threestudio.utils.ops import get_mvp_matrix, get_projection_matrix_from_intrinsics, get_ray_directions, get_rays

BACKGROUNDS = ("white", "black", "random")


@dataclass
class MultiviewImageDataModuleConfig:
    # a folder with transforms_{train,val,test}.json or transforms.json, a transforms json file, or
    # (orbit convention) a folder of frames or a video file
    dataroot: str = "???"
    convention: str = "auto"  # auto | transforms | orbit
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    # with a single transforms file: every k-th frame is held out for validation (0: validate on train frames)
    holdout_every: int = 0
    # resize all views to this size (intrinsics follow); None keeps the stored size
    height: Optional[int] = None
    width: Optional[int] = None
    # RGB images without alpha: a folder of masks (same file stems), else a flat background colour to key out
    mask_dir: Optional[str] = None
    key_background: Optional[str] = None  # white | black | None (no mask: every pixel is object)
    key_threshold: float = 0.02
    # orbit convention (SV3D-style): evenly spaced azimuths, the last frame is the input view
    orbit_elevation_deg: Any = 10.0  # one number, or one per frame
    orbit_distance: float = 2.0
    orbit_fovy_deg: float = 40.0
    orbit_azimuth_offset_deg: float = 0.0
    # training: random rays per step and the background the targets are composited on
    batch_size: int = 4096
    # > 0: each training batch is this many whole random views (with `mvp_mtx`), for mesh rasterizers
    # (nvdiff-rasterizer); 0: `batch_size` random rays (volume renderers)
    train_views_per_step: int = 0
    background: str = "random"  # white | black | random (random colour per ray teaches the mask)
    # evaluation
    eval_background: str = "white"
    n_val_views: int = 4
    test_views: str = "orbit"  # orbit: n_test_views around the object (video) | split: the test split's views
    n_test_views: int = 120
    eval_height: Optional[int] = None
    eval_width: Optional[int] = None
    eval_elevation_deg: float = 15.0
    eval_camera_distance: Optional[float] = None  # default: mean training camera distance
    eval_fovy_deg: Optional[float] = None  # default: mean training field of view


def _rays_of(views: ViewSet) -> tuple[Tensor, Tensor]:
    """World rays (N,H,W,3) of every pixel of every view."""
    rays_o, rays_d = [], []
    for i in range(len(views)):
        fx, fy, cx, cy = views.intrinsics[i].tolist()
        dirs = get_ray_directions(views.height, views.width, (fx, fy), (cx, cy))
        o, d = get_rays(dirs, views.c2w[i:i + 1])
        rays_o.append(o[0]), rays_d.append(d[0])
    return torch.stack(rays_o), torch.stack(rays_d)


def mvp_matrices(views: ViewSet) -> Tensor:
    """(N, 4, 4) model-view-projection matrices of the views (NDC y up, row 0 at the top)."""
    proj = get_projection_matrix_from_intrinsics(views.intrinsics, views.width, views.height)
    return get_mvp_matrix(views.c2w, proj)


def background_color(name: str) -> Tensor:
    return torch.ones(3) if name == "white" else torch.zeros(3)


class RandomRayDataset(StepIndexedIterableDataset):
    """Endless batches of random training rays; the batch of step s depends only on (seed, s)."""

    def __init__(self, views: ViewSet, batch_size: int, background: str, seed: int,
                 start_step: Callable[[], int]) -> None:
        super().__init__(start_step)
        self.rays_o, self.rays_d = (r.reshape(-1, 3) for r in _rays_of(views))
        self.rgb = views.images.reshape(-1, 3)
        self.mask = views.masks.reshape(-1, 1)
        self.camera_positions = views.c2w[:, :3, 3]
        self.pixels_per_view = views.height * views.width
        self.batch_size = batch_size
        self.background = background
        self.seed = seed

    def batch_at(self, step: int) -> dict:
        gen = torch.Generator().manual_seed(step_seed(self.seed, step, "rays"))
        index = torch.randint(0, self.rays_o.shape[0], (self.batch_size,), generator=gen)
        n = self.batch_size
        if self.background == "random":
            bg = torch.rand(n, 3, generator=gen)
        else:
            bg = background_color(self.background).expand(n, 3)
        mask = self.mask[index]
        rgb = self.rgb[index] * mask + bg * (1 - mask)
        # each ray is lit from its own view's camera (rays of one batch come from many views)
        light = self.camera_positions[index // self.pixels_per_view]
        return {
            "rays_o": self.rays_o[index].reshape(1, n, 1, 3),
            "rays_d": self.rays_d[index].reshape(1, n, 1, 3),
            "rgb": rgb.reshape(1, n, 1, 3),
            "mask": mask.reshape(1, n, 1, 1),
            "bg_color": bg.reshape(1, n, 1, 3),
            "light_positions": light.reshape(1, n, 1, 3),
            "height": n,
            "width": 1,
        }


class RandomViewDataset(StepIndexedIterableDataset):
    """Endless batches of `n_views` whole random training views (for rasterizers); step-indexed like rays."""

    def __init__(self, views: ViewSet, n_views: int, background: str, seed: int,
                 start_step: Callable[[], int]) -> None:
        super().__init__(start_step)
        self.views = views
        self.n_views = n_views
        self.background = background
        self.seed = seed
        self.rays_o, self.rays_d = _rays_of(views)
        self.mvp = mvp_matrices(views)

    def batch_at(self, step: int) -> dict:
        gen = torch.Generator().manual_seed(step_seed(self.seed, step, "views"))
        index = torch.randint(0, len(self.views), (self.n_views,), generator=gen)
        v = self.views
        if self.background == "random":
            bg = torch.rand(self.n_views, 3, generator=gen)
        else:
            bg = background_color(self.background).expand(self.n_views, 3)
        mask = v.masks[index]
        bg_image = bg[:, None, None, :]
        positions = v.c2w[index, :3, 3]
        return {
            "index": index,
            "rays_o": self.rays_o[index],
            "rays_d": self.rays_d[index],
            "rgb": v.images[index] * mask + bg_image * (1 - mask),
            "mask": mask,
            "bg_color": bg_image.expand(-1, v.height, v.width, -1).contiguous(),
            "mvp_mtx": self.mvp[index],
            "c2w": v.c2w[index],
            "camera_positions": positions,
            "light_positions": positions,
            "height": v.height,
            "width": v.width,
        }


class ViewDataset(Dataset):
    """Whole views with their ground truth composited on the evaluation background."""

    def __init__(self, views: ViewSet, background: str) -> None:
        self.views = views
        self.bg = background_color(background)
        self.rays_o, self.rays_d = _rays_of(views)
        self.mvp = mvp_matrices(views)

    def __len__(self) -> int:
        return len(self.views)

    def __getitem__(self, index: int) -> dict:
        v = self.views
        mask = v.masks[index]
        return {
            "index": torch.tensor([index]),
            "rays_o": self.rays_o[index:index + 1],
            "rays_d": self.rays_d[index:index + 1],
            "rgb": (v.images[index] * mask + self.bg * (1 - mask))[None],
            "mask": mask[None],
            "bg_color": self.bg,
            "c2w": v.c2w[index:index + 1],
            "mvp_mtx": self.mvp[index:index + 1],
            "camera_positions": v.c2w[index:index + 1, :3, 3],
            "light_positions": v.c2w[index:index + 1, :3, 3],
            "height": v.height,
            "width": v.width,
        }


@threestudio.register("multiview-image-datamodule")
class MultiviewImageDataModule(CameraDataModule):
    Config = MultiviewImageDataModuleConfig

    def __init__(self, cfg: Optional[Any] = None, config_path: str = "data") -> None:
        super().__init__(cfg, config_path)
        c = self.cfg
        for key in ("background", "eval_background"):
            if getattr(c, key) not in BACKGROUNDS or (key == "eval_background" and c.eval_background == "random"):
                raise ConfigError(f"{config_path}.{key}: '{getattr(c, key)}' is not one of "
                                  f"{BACKGROUNDS if key == 'background' else BACKGROUNDS[:2]}.")
        if c.key_background not in (None, "white", "black"):
            raise ConfigError(f"{config_path}.key_background must be white, black or null, got '{c.key_background}'.")
        if c.train_views_per_step < 0:
            raise ConfigError(f"{config_path}.train_views_per_step must be >= 0, got {c.train_views_per_step}.")
        if c.test_views not in ("orbit", "split"):
            raise ConfigError(f"{config_path}.test_views must be 'orbit' or 'split', got '{c.test_views}'.")
        if c.convention not in ("auto", "transforms", "orbit"):
            raise ConfigError(f"{config_path}.convention must be auto, transforms or orbit, got '{c.convention}'.")
        if (c.height is None) != (c.width is None):
            raise ConfigError(f"{config_path}.height and width must be given together.")
        for key in ("height", "width", "eval_height", "eval_width"):
            if getattr(c, key) is not None:
                require_positive(getattr(c, key), f"{config_path}.{key}")
        for key in ("batch_size", "n_test_views"):
            require_positive(getattr(c, key), f"{config_path}.{key}")
        require_positive(c.n_val_views, f"{config_path}.n_val_views", allow_zero=True)
        require_positive(c.holdout_every, f"{config_path}.holdout_every", allow_zero=True)
        self.train_views, self.val_views, self.test_views = self._load()

    # ------------------------------------------------------------------------ loading
    def _convention(self) -> str:
        c = self.cfg
        if c.convention != "auto":
            return c.convention
        root = c.dataroot
        if os.path.isfile(root):
            return "orbit" if os.path.splitext(root)[1].lower() in VIDEO_EXTENSIONS else "transforms"
        if os.path.isdir(root) and not any(n.startswith("transforms") and n.endswith(".json") for n in os.listdir(root)):
            return "orbit"
        return "transforms"

    def _resize(self, views: ViewSet) -> ViewSet:
        return views.resized(self.cfg.height, self.cfg.width) if self.cfg.height is not None else views

    def _load(self) -> tuple[ViewSet, ViewSet, Optional[ViewSet]]:
        c = self.cfg
        if c.dataroot in ("???", ""):
            raise ConfigError("data.dataroot is required: a transforms json / folder, or an orbit video / folder.")
        if self._convention() == "orbit":
            views = self._resize(load_orbit(c.dataroot, c.orbit_elevation_deg, c.orbit_distance, c.orbit_fovy_deg,
                                            c.orbit_azimuth_offset_deg, c.mask_dir, c.key_background or "white",
                                            c.key_threshold))
            return views, self._holdout(views)[1], None
        files = transforms_files(c.dataroot, {"train": c.train_split, "val": c.val_split, "test": c.test_split})
        cache: dict[str, ViewSet] = {}

        def load(path: str) -> ViewSet:
            if path not in cache:
                cache[path] = self._resize(load_transforms(path, c.mask_dir, c.key_background, c.key_threshold))
            return cache[path]

        train = load(files["train"])
        if files.get("val", files["train"]) == files["train"]:
            train, val = self._holdout(train)
        else:
            val = load(files["val"])
        test = load(files["test"]) if "test" in files and files["test"] != files["train"] else None
        return train, val, test

    def _holdout(self, views: ViewSet) -> tuple[ViewSet, ViewSet]:
        """Single source: (train, val) — every k-th view held out, or validate on the first training views."""
        k = self.cfg.holdout_every
        if k > 0 and len(views) > 1:
            held = list(range(0, len(views), k))
            kept = [i for i in range(len(views)) if i % k != 0]
            return views.subset(kept), views.subset(held)
        return views, views.subset(range(min(self.cfg.n_val_views, len(views))))

    # --------------------------------------------------------------- evaluation cameras
    def orbit_defaults(self) -> dict:
        """Elevation, distance, fovy and size of the test orbit (config, else from the training cameras)."""
        c, v = self.cfg, self.train_views
        distance = c.eval_camera_distance or float(v.c2w[:, :3, 3].norm(dim=-1).mean())
        fovy = c.eval_fovy_deg or float(torch.rad2deg(2 * torch.atan(0.5 * v.height / v.intrinsics[:, 1])).mean())
        return dict(elevation_deg=c.eval_elevation_deg, distance=distance, fovy_deg=fovy,
                    height=c.eval_height or v.height, width=c.eval_width or v.width)

    # --------------------------------------------------------------------- lightning
    def setup(self, stage: Optional[str] = None) -> None:
        c = self.cfg
        if stage in (None, "fit"):
            if c.train_views_per_step > 0:
                self.train_dataset = RandomViewDataset(self.train_views, c.train_views_per_step, c.background,
                                                       self.seed(), self.start_step)
            else:
                self.train_dataset = RandomRayDataset(self.train_views, c.batch_size, c.background, self.seed(),
                                                      self.start_step)
        self.val_dataset = ViewDataset(self.val_views.subset(range(min(c.n_val_views, len(self.val_views)))),
                                       c.eval_background)
        if c.test_views == "split":
            if self.test_views is None:
                raise DatasetError(f"data.test_views=split but '{c.dataroot}' has no separate "
                                   f"transforms_{c.test_split}.json.")
            self.test_dataset: Dataset = ViewDataset(self.test_views, c.eval_background)
        else:
            self.test_dataset = self._orbit(c.n_test_views)

    def _orbit(self, n_views: int) -> OrbitViewDataset:
        return OrbitViewDataset(n_views, **self.orbit_defaults(),
                                extra={"bg_color": background_color(self.cfg.eval_background)})

    def predict_dataset(self) -> Dataset:
        return self._orbit(1)
