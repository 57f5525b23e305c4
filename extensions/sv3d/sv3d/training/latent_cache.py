"""Optional latent cache: VAE latents and CLIP embeddings of every view, precomputed into safetensors shards.

With a cache (`data.latent_cache=<folder>`), a training step reads the F target latents and the condition view's
CLIP embedding instead of running the VAE on F frames and CLIP on one; only the noise-augmented condition view
still goes through the VAE encoder (the augmentation is in pixel space), i.e. one encoder frame per clip instead
of F + 1. Written by

    python -m sv3d.latent_cache --config train.yaml [key=value ...]

Layout: `index.json` (source checkpoint, resolution, object names and view counts, shard of each object) and
`shard_NNNNN.safetensors` holding `<object>.latents` (V, 4, R/8, R/8) unscaled VAE mode latents and
`<object>.clip` (V, D) image embeddings, views in ring order.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Dict, List, Sequence, Tuple

import torch

from .data_readers import DatasetError, OrbitObject

INDEX = "index.json"


class LatentCache:
    """Read side of a cache folder; checks that it describes the same objects at the same resolution."""

    def __init__(self, folder: str, objects: Sequence[OrbitObject], resolution: int):
        path = os.path.join(folder, INDEX)
        if not os.path.isfile(path):
            raise DatasetError(f"latent cache {folder!r} has no {INDEX}; build it with `python -m sv3d.latent_cache`")
        with open(path) as f:
            self.index = json.load(f)
        if int(self.index["resolution"]) != int(resolution):
            raise DatasetError(f"latent cache {folder!r} was built at resolution {self.index['resolution']}, data.resolution is {resolution}")
        names = [[o.name, o.num_views] for o in objects]
        if self.index["objects"] != names:
            raise DatasetError(f"latent cache {folder!r} describes other objects than the dataset (rebuild it)")
        self.folder = folder
        self._handles: Dict[str, object] = {}

    def get(self, obj_idx: int) -> Tuple[torch.Tensor, torch.Tensor]:
        from safetensors import safe_open

        shard = self.index["shards"][obj_idx]
        if shard not in self._handles:  # opened lazily, so that each DataLoader worker has its own handle
            self._handles[shard] = safe_open(os.path.join(self.folder, shard), framework="pt")
        h = self._handles[shard]
        return h.get_tensor(f"{obj_idx}.latents"), h.get_tensor(f"{obj_idx}.clip")


@torch.no_grad()
def build_latent_cache(folder: str, objects: Sequence[OrbitObject], vae, image_encoder, resolution: int,
                       source: str = "", objects_per_shard: int = 64, chunk: int = 8) -> str:
    """Encode every view of every object; writes into a new folder (never over an existing one)."""
    from ..preprocess import clip_preprocess
    from .dataset import load_view

    if os.path.exists(folder):
        raise FileExistsError(f"{folder} exists; a latent cache is written into a new folder")
    parent = os.path.dirname(os.path.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp_latent_cache_", dir=parent)
    device = next(vae.parameters()).device
    vdtype, cdtype = next(vae.parameters()).dtype, next(image_encoder.parameters()).dtype
    try:
        from safetensors.torch import save_file

        shards: List[str] = []
        buf: Dict[str, torch.Tensor] = {}
        for i, obj in enumerate(objects):
            paths = [p for ring in obj.rings for p in ring.image_paths]
            lat, emb = [], []
            for s in range(0, len(paths), chunk):
                x = torch.stack([load_view(p, resolution) for p in paths[s : s + chunk]]).to(device)
                lat.append(vae.encode(x.to(vdtype)).latent_dist.mode().float().cpu())
                pix = clip_preprocess(x.float(), image_encoder.config.image_size).to(cdtype)
                emb.append(image_encoder(pixel_values=pix).image_embeds.float().cpu())
            buf[f"{i}.latents"], buf[f"{i}.clip"] = torch.cat(lat).contiguous(), torch.cat(emb).contiguous()
            shards.append(f"shard_{i // objects_per_shard:05d}.safetensors")
            if (i + 1) % objects_per_shard == 0 or i == len(objects) - 1:
                save_file(buf, os.path.join(tmp, shards[-1]))
                buf = {}
        with open(os.path.join(tmp, INDEX), "w") as f:
            json.dump({"source": source, "resolution": int(resolution), "objects": [[o.name, o.num_views] for o in objects],
                       "shards": shards}, f, indent=1)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
