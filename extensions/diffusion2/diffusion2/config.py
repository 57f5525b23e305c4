"""Settings of a Diffusion² run (defaults: the reference's main.py and its model configs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Union

import numpy as np
from sv3d import orbit_azimuths_deg

from .weights import SCHEDULES


@dataclass
class Diffusion2Config:
    num_views: int = 21  # SV3D_p orbit length
    num_frames: int = 25  # SVD-xt video length (a video input sets it to its frame count)
    num_steps: int = 50
    seed: int = 23
    elevations_deg: Union[float, Sequence[float]] = 10.0
    azimuths_deg: Optional[Sequence[float]] = None  # default: evenly spaced, the last view is the input
    fps_id: float = 24
    motion_bucket_id: float = 127
    sv3d_cond_aug: float = 1e-5
    svd_cond_aug: float = 0.02
    sv3d_min_scale: float = 2.5  # the reference's sv3d_p guider: a triangle with min = max = 2.5
    sv3d_max_scale: float = 2.5
    svd_min_scale: float = 1.5
    svd_max_scale: float = 3.0
    scale_schedule: str = "constant"
    sv3d_scale: float = 0.6
    sv3d_scale_min: float = 0.0
    sv3d_scale_max: float = 1.0
    scale_k: float = 15.0
    vrs_steps: int = 10
    chunk: int = 2  # lines per UNet call (x2 for CFG)
    decoding_t: int = 10  # frames per VAE decode call
    image_size: int = 576
    last_azimuth_full_turn: bool = True  # the reference gives the input view the azimuth id 2*pi, not 0

    def validate(self) -> None:
        if self.scale_schedule not in SCHEDULES:
            raise ValueError(f"scale_schedule {self.scale_schedule!r} is not one of {', '.join(SCHEDULES)}")
        for name in ("num_views", "num_frames", "num_steps", "chunk", "decoding_t"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.num_frames > 25:
            raise ValueError(f"num_frames {self.num_frames} > 25: SVD-xt makes videos of at most 25 frames")
        if self.image_size % 64:
            raise ValueError(f"image_size {self.image_size} is not a multiple of 64")
        self.elevations()
        self.azimuths()

    def elevations(self) -> List[float]:
        e = np.atleast_1d(np.asarray(self.elevations_deg, dtype=np.float64))
        if len(e) == 1:
            e = np.repeat(e, self.num_views)
        if len(e) != self.num_views:
            raise ValueError(f"give 1 elevation or {self.num_views} (one per view); got {len(e)}")
        return [float(v) for v in e]

    def azimuths(self) -> List[float]:
        """Azimuths in degrees relative to the input view (the last one, 0)."""
        if self.azimuths_deg is None:
            return [float(a) for a in orbit_azimuths_deg(self.num_views)]
        a = [float(v) for v in self.azimuths_deg]
        if len(a) != self.num_views:
            raise ValueError(f"give {self.num_views} azimuths (one per view, the last is the input view); got {len(a)}")
        return [(v - a[-1]) % 360.0 for v in a]
