"""`random-camera-datamodule`: random cameras around the object for score distillation."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

import threestudio
from threestudio.data.camera_sampling import CameraRanges, orbit_cameras, sample_random_cameras
from threestudio.utils.config import ConfigError, parse_structured
from threestudio.utils.misc import get_rank, step_seed
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


class RandomCameraIterableDataset(IterableDataset):
    """Endless random camera batches. The batch for step s depends only on (seed, s), so a resumed run
    sees the same cameras as an uninterrupted one; resolution and batch size follow the milestones."""

    def __init__(self, cfg: RandomCameraDataModuleConfig, seed: int, start_step: Callable[[], int]) -> None:
        super().__init__()
        self.cfg = cfg
        self.seed = seed
        self.start_step = start_step
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

    def __iter__(self) -> Iterator[dict]:
        step = self.start_step()
        while True:
            yield self.batch_at(step)
            step += 1


class OrbitViewDataset(Dataset):
    """`n_views` cameras on an orbit, one batch of one per item (rays made on demand)."""

    def __init__(self, n_views: int, elevation_deg: float, distance: float, fovy_deg: float, height: int,
                 width: int, relative_radius: bool = False) -> None:
        self.n_views = n_views
        self.args = dict(elevation_deg=elevation_deg, distance=distance, fovy_deg=fovy_deg, height=height,
                         width=width, relative_radius=relative_radius)

    def __len__(self) -> int:
        return self.n_views

    def __getitem__(self, index: int) -> dict:
        batch = orbit_cameras(1, azimuth_start=index * 360.0 / self.n_views, **self.args)
        batch["index"] = torch.tensor([index])
        return batch


@threestudio.register("random-camera-datamodule")
class RandomCameraDataModule(pl.LightningDataModule):
    Config = RandomCameraDataModuleConfig

    def __init__(self, cfg: Optional[Any] = None, config_path: str = "data") -> None:
        super().__init__()
        self.cfg = parse_structured(self.Config, cfg, where=config_path)
        self._resume_step = 0
        # validate phases now, before any work starts
        self._make_train_dataset()

    def _seed(self) -> int:
        return int(os.environ.get("PL_GLOBAL_SEED", 0)) + get_rank()

    def _start_step(self) -> int:
        return self._resume_step

    # Lightning stores this in checkpoints and restores it before the training iterator starts,
    # so a resumed run continues with the cameras of the step it stopped at.
    def state_dict(self) -> dict:
        trainer = getattr(self, "trainer", None)
        return {"global_step": trainer.global_step if trainer is not None else 0}

    def load_state_dict(self, state_dict: dict) -> None:
        self._resume_step = int(state_dict.get("global_step", 0))

    def _make_train_dataset(self) -> RandomCameraIterableDataset:
        return RandomCameraIterableDataset(self.cfg, self._seed(), self._start_step)

    def _orbit(self, n_views: int) -> OrbitViewDataset:
        c = self.cfg
        return OrbitViewDataset(n_views, c.eval_elevation_deg, c.eval_camera_distance, c.eval_fovy_deg,
                                c.eval_height, c.eval_width, c.relative_radius)

    def setup(self, stage: Optional[str] = None) -> None:
        self.train_dataset = self._make_train_dataset()
        self.val_dataset = self._orbit(self.cfg.n_val_views)
        self.test_dataset = self._orbit(self.cfg.n_test_views)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_dataset, batch_size=None, num_workers=0)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_dataset, batch_size=None, num_workers=0)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_dataset, batch_size=None, num_workers=0)

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self._orbit(1), batch_size=None, num_workers=0)
