"""Shared pieces of the data modules: step-indexed training batches, resumable state, orbit views."""
from __future__ import annotations

import os
from typing import Any, Callable, Iterator, Optional

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from threestudio.data.camera_sampling import orbit_cameras
from threestudio.utils.config import parse_structured
from threestudio.utils.misc import get_rank


class StepIndexedIterableDataset(IterableDataset):
    """Endless training batches; the batch of step s is `batch_at(s)`, which must depend only on
    (seed, s), so a resumed run sees exactly the batches of an uninterrupted one."""

    def __init__(self, start_step: Callable[[], int]) -> None:
        super().__init__()
        self.start_step = start_step

    def batch_at(self, step: int) -> dict:
        raise NotImplementedError

    def __iter__(self) -> Iterator[dict]:
        step = self.start_step()
        while True:
            yield self.batch_at(step)
            step += 1


class OrbitViewDataset(Dataset):
    """`n_views` cameras evenly spaced in azimuth from `azimuth_start`, one batch of one per item
    (rays are made on demand: 120 test views at 512² would not fit in memory at once)."""

    def __init__(self, n_views: int, elevation_deg: float, distance: float, fovy_deg: float, height: int,
                 width: int, azimuth_start: float = 0.0, relative_radius: bool = False,
                 extra: Optional[dict] = None) -> None:
        self.n_views = n_views
        self.azimuth_start = azimuth_start
        self.args = dict(elevation_deg=elevation_deg, distance=distance, fovy_deg=fovy_deg, height=height,
                         width=width, relative_radius=relative_radius)
        self.extra = extra or {}

    def __len__(self) -> int:
        return self.n_views

    def __getitem__(self, index: int) -> dict:
        batch = orbit_cameras(1, azimuth_start=self.azimuth_start + index * 360.0 / self.n_views, **self.args)
        batch["index"] = torch.tensor([index])
        batch.update(self.extra)
        return batch


class CameraDataModule(pl.LightningDataModule):
    """Base data module: validated config, a resumable step counter, and dataloaders over
    `train_dataset`, `val_dataset`, `test_dataset` and `predict_dataset()` set up by subclasses."""

    Config: type

    def __init__(self, cfg: Optional[Any] = None, config_path: str = "data") -> None:
        super().__init__()
        self.cfg = parse_structured(self.Config, cfg, where=config_path)
        self.config_path = config_path
        self._resume_step = 0

    def seed(self) -> int:
        return int(os.environ.get("PL_GLOBAL_SEED", 0)) + get_rank()

    def start_step(self) -> int:
        return self._resume_step

    # Lightning stores this in checkpoints and restores it before the training iterator starts,
    # so a resumed run continues with the batches of the step it stopped at.
    def state_dict(self) -> dict:
        trainer = getattr(self, "trainer", None)
        return {"global_step": trainer.global_step if trainer is not None else 0}

    def load_state_dict(self, state_dict: dict) -> None:
        self._resume_step = int(state_dict.get("global_step", 0))

    def predict_dataset(self) -> Dataset:
        """Export needs one (unused) item to run Lightning's predict loop."""
        return torch.utils.data.Subset(self.test_dataset, [0])

    def _loader(self, dataset: Dataset) -> DataLoader:
        # datasets yield whole batches; camera maths is cheap next to rendering, so no workers
        return DataLoader(dataset, batch_size=None, num_workers=0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_dataset())
