"""`random-multiview-camera-datamodule`: groups of views of one object for multiview priors (MVDream)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import threestudio
from threestudio.data.random_camera import RandomCameraDataModule, RandomCameraDataModuleConfig


@dataclass
class RandomMultiviewCameraDataModuleConfig(RandomCameraDataModuleConfig):
    n_view: int = 4
    # views of one object share one camera; perturbations would break the 90° spacing the prior expects
    camera_perturb: float = 0.0
    center_perturb: float = 0.0
    up_perturb: float = 0.0
    elevation_range: list = field(default_factory=lambda: [0.0, 30.0])
    fovy_range: list = field(default_factory=lambda: [15.0, 60.0])
    camera_distance_range: list = field(default_factory=lambda: [0.8, 1.0])
    relative_radius: bool = True
    batch_size: Any = 4


@threestudio.register("random-multiview-camera-datamodule")
class RandomMultiviewCameraDataModule(RandomCameraDataModule):
    Config = RandomMultiviewCameraDataModuleConfig
