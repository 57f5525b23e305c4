"""Training clips from orbit objects: random cyclic roll of the condition view, F views, RGBA on white."""

from __future__ import annotations

from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from .data_readers import DatasetError, OrbitObject
from .randomness import STREAM_DATA, STREAM_ORDER, keyed_generator


def load_view(path: str, resolution: int) -> torch.Tensor:
    """One view as (3, R, R) in [-1, 1]: alpha composited on white (the reference's image-folder path drops alpha
    without compositing, a defect), resized with Lanczos to a square of `resolution`."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                rgba = np.asarray(im.convert("RGBA"), dtype=np.float32) / 255.0
                rgb = rgba[..., :3] * rgba[..., 3:] + (1.0 - rgba[..., 3:])
                im = Image.fromarray((rgb * 255.0 + 0.5).astype(np.uint8))
            else:
                im = im.convert("RGB")
            if im.size != (resolution, resolution):
                im = im.resize((resolution, resolution), Image.LANCZOS)
            arr = np.asarray(im, dtype=np.float32) / 255.0
    except FileNotFoundError:
        raise DatasetError(f"image {path!r} does not exist") from None
    except OSError as exc:
        raise DatasetError(f"image {path!r} cannot be read ({exc})") from None
    return torch.from_numpy(arr).permute(2, 0, 1) * 2.0 - 1.0


class OrbitClipDataset(torch.utils.data.Dataset):
    """Item `position` (a global sample counter) -> one clip of `num_frames` views.

    The object is `position`'s entry in the epoch's permutation; the condition view is drawn uniformly among all
    the object's views (its ring is the clip's ring), the ring is rolled so that it comes first and the first
    `num_frames` views are kept. Every draw is keyed by (seed, position) (see `randomness`).

    Returns frames (F, 3, R, R) in [-1, 1] (frame 0 = condition view), elevation_deg (F,), azimuth_deg (F,)
    relative to the condition view in [0, 360), position, object index. With a latent cache: frames holds the
    condition view only (1, 3, R, R), plus latents (F, 4, R/8, R/8) unscaled and clip (D,) of the condition view.
    """

    def __init__(self, objects: Sequence[OrbitObject], num_frames: int, resolution: int = 576, seed: int = 0,
                 random_roll: bool = True, shuffle: bool = True, latent_cache: Optional[str] = None):
        self.objects = list(objects)
        self.num_frames = int(num_frames)
        self.resolution = int(resolution)
        self.seed = int(seed)
        self.random_roll = bool(random_roll)
        self.shuffle = bool(shuffle)
        for obj in self.objects:
            short = [len(r.image_paths) for r in obj.rings if len(r.image_paths) < self.num_frames]
            if short:
                raise DatasetError(
                    f"object {obj.name!r} has a ring of {short[0]} views, fewer than num_frames={self.num_frames} "
                    "(lower data.num_frames or drop the object)"
                )
        self._perm_cache: Dict[int, np.ndarray] = {}
        self.cache = None
        if latent_cache:
            from .latent_cache import LatentCache

            self.cache = LatentCache(latent_cache, self.objects, self.resolution)

    def __len__(self) -> int:
        return len(self.objects)

    def object_index(self, position: int) -> int:
        n = len(self.objects)
        epoch, k = divmod(int(position), n)
        if not self.shuffle:
            return k
        if epoch not in self._perm_cache:
            self._perm_cache = {epoch: torch.randperm(n, generator=keyed_generator(self.seed, STREAM_ORDER, epoch)).numpy()}
        return int(self._perm_cache[epoch][k])

    def choose_views(self, obj: OrbitObject, position: int):
        """(ring, ordered view indices in the ring, offset of the ring in the object's views): condition view first."""
        if self.random_roll:
            g = keyed_generator(self.seed, STREAM_DATA, position)
            v = int(torch.randint(obj.num_views, (1,), generator=g))
        else:
            v = 0
        offset = 0
        for ring in obj.rings:
            if v < len(ring.image_paths):
                break
            v -= len(ring.image_paths)
            offset += len(ring.image_paths)
        n = len(ring.image_paths)
        return ring, [(v + i) % n for i in range(self.num_frames)], offset

    def __getitem__(self, position: int) -> Dict[str, object]:
        idx = self.object_index(position)
        obj = self.objects[idx]
        ring, views, offset = self.choose_views(obj, position)
        extra = {}
        if self.cache is not None:  # only the condition view's pixels are needed (for its noise augmentation)
            frames = load_view(ring.image_paths[views[0]], self.resolution)[None]
            latents, clip = self.cache.get(idx)
            extra = {"latents": latents[[offset + i for i in views]], "clip": clip[offset + views[0]]}
        else:
            frames = torch.stack([load_view(ring.image_paths[i], self.resolution) for i in views])
        elev = torch.tensor([ring.elevations_deg[i] for i in views], dtype=torch.float32)
        az0 = ring.azimuths_deg[views[0]]
        azim = torch.tensor([(ring.azimuths_deg[i] - az0) % 360.0 for i in views], dtype=torch.float32)
        return {"frames": frames, "elevation_deg": elev, "azimuth_deg": azim, "position": int(position), "object": idx, **extra}


def collate_clips(items: List[Dict[str, object]]) -> Dict[str, torch.Tensor]:
    out = {}
    for key in items[0]:
        vals = [it[key] for it in items]
        out[key] = torch.stack(vals) if isinstance(vals[0], torch.Tensor) else torch.tensor(vals)
    return out


class RankBatchSampler(torch.utils.data.Sampler):
    """Batches of global sample positions for one rank: micro-step m of the whole run covers positions
    [m*B*W, (m+1)*B*W), and rank r takes the r-th block of B. Starting at `start_step` resumes exactly."""

    def __init__(self, batch_size: int, world_size: int, rank: int, start_step: int, num_steps: int):
        self.batch_size, self.world_size, self.rank = int(batch_size), int(world_size), int(rank)
        self.start_step, self.num_steps = int(start_step), int(num_steps)

    def positions(self, step: int) -> List[int]:
        base = (step * self.world_size + self.rank) * self.batch_size
        return list(range(base, base + self.batch_size))

    def __iter__(self) -> Iterator[List[int]]:
        for step in range(self.start_step, self.num_steps):
            yield self.positions(step)

    def __len__(self) -> int:
        return max(0, self.num_steps - self.start_step)
