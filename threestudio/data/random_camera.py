"""`random-camera-datamodule`: random cameras around the object for score distillation."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

import threestudio
from threestudio.data.base import CameraDataModule, OrbitViewDataset, StepIndexedIterableDataset
from threestudio.data.camera_sampling import CameraRanges, sample_random_cameras
from threestudio.utils.config import ConfigError, require_positive
from threestudio.utils.misc import step_seed
from threestudio.utils.schedule import milestone_value


@dataclass
class RandomCameraDataModuleConfig:
    # int, or one value per resolution phase: e.g. height [64, 256] with resolution_milestones [5000]
    height: Any = 64
    width: Any = 64
    batch_size: Any = 1
    resolution_milestones: list = field(default_factory=list)
    eval_height: int = 512
    eval_width: int = 512
    eval_batch_size: int = 1
    n_val_views: int = 1
    n_test_views: int = 120
    elevation_range: list = field(default_factory=lambda: [-10.0, 90.0])
    azimuth_range: list = field(default_factory=lambda: [-180.0, 180.0])
    camera_distance_range: list = field(default_factory=lambda: [1.0, 1.5])
    fovy_range: list = field(default_factory=lambda: [40.0, 70.0])
    camera_perturb: float = 0.1
    center_perturb: float = 0.2
    up_perturb: float = 0.02
    light_position_perturb: float = 1.0
    light_distance_range: list = field(default_factory=lambda: [0.8, 1.5])
    batch_uniform_azimuth: bool = True
    # training camera distances divided by tan(fovy / 2) (MVDream-threestudio); evaluation distances are absolute
    relative_radius: bool = False
    eval_elevation_deg: float = 15.0
    eval_camera_distance: float = 1.5
    eval_fovy_deg: float = 70.0
    # views per object sharing elevation, fovy and distance (the multiview data module sets 4)
    n_view: int = 1


def _per_phase(value: Any, n_phases: int, name: str) -> list:
    values = list(value) if isinstance(value, (list, tuple)) else [value] * n_phases
    if len(values) != n_phases:
        raise ConfigError(
            f"data.{name} has {len(values)} values but resolution_milestones defines {n_phases} phases."
        )
    return values


class RandomCameraIterableDataset(StepIndexedIterableDataset):
    """Endless random camera batches; resolution and batch size follow the milestones."""

    def __init__(self, cfg: RandomCameraDataModuleConfig, seed: int, start_step: Callable[[], int]) -> None:
        super().__init__(start_step)
        self.cfg = cfg
        self.seed = seed
        n_phases = len(cfg.resolution_milestones) + 1
        self.heights = _per_phase(cfg.height, n_phases, "height")
        self.widths = _per_phase(cfg.width, n_phases, "width")
        self.batch_sizes = _per_phase(cfg.batch_size, n_phases, "batch_size")
        for bs in self.batch_sizes:
            if bs % cfg.n_view != 0:
                raise ConfigError(f"data.batch_size {bs} must be a multiple of data.n_view ({cfg.n_view}).")
        names = {f.name for f in dataclasses.fields(CameraRanges)}
        self.ranges = CameraRanges(**{k: v for k, v in dataclasses.asdict(cfg).items() if k in names})

    def batch_at(self, step: int) -> dict:
        milestones = self.cfg.resolution_milestones
        generator = torch.Generator().manual_seed(step_seed(self.seed, step, "cameras"))
        return sample_random_cameras(
            self.ranges,
            batch_size=milestone_value(self.batch_sizes, milestones, step),
            n_view=self.cfg.n_view,
            height=milestone_value(self.heights, milestones, step),
            width=milestone_value(self.widths, milestones, step),
            gen=generator,
        )


@threestudio.register("random-camera-datamodule")
class RandomCameraDataModule(CameraDataModule):
    Config = RandomCameraDataModuleConfig

    def __init__(self, cfg: Optional[Any] = None, config_path: str = "data") -> None:
        super().__init__(cfg, config_path)
        c = self.cfg
        for key in ("height", "width", "batch_size", "eval_height", "eval_width", "eval_batch_size", "n_test_views",
                    "n_view"):
            require_positive(getattr(c, key), f"{config_path}.{key}")
        require_positive(c.n_val_views, f"{config_path}.n_val_views", allow_zero=True)
        milestones = list(c.resolution_milestones)
        if milestones:
            require_positive(milestones, f"{config_path}.resolution_milestones")
            if any(b <= a for a, b in zip(milestones[:-1], milestones[1:])):
                raise ConfigError(f"{config_path}.resolution_milestones must increase, got {milestones}.")
        # validate the phases now, before any work starts
        self._make_train_dataset()

    def _make_train_dataset(self) -> RandomCameraIterableDataset:
        return RandomCameraIterableDataset(self.cfg, self.seed(), self.start_step)

    def _orbit(self, n_views: int) -> OrbitViewDataset:
        c = self.cfg
        return OrbitViewDataset(n_views, c.eval_elevation_deg, c.eval_camera_distance, c.eval_fovy_deg,
                                c.eval_height, c.eval_width)

    def setup(self, stage: Optional[str] = None) -> None:
        self.train_dataset = self._make_train_dataset()
        self.val_dataset = self._orbit(self.cfg.n_val_views)
        self.test_dataset = self._orbit(self.cfg.n_test_views)
