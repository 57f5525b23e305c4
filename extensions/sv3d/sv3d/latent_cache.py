"""Precompute the latent cache of a training config (VAE latents + CLIP embeddings of every view).

    python -m sv3d.latent_cache --config train.yaml [key=value ...]     # writes data.latent_cache

Then train with the same config: `data.latent_cache` makes the loop read the cache (see
sv3d/training/latent_cache.py for what still runs per step).
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sv3d.latent_cache", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None)
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    p.add_argument("--objects_per_shard", type=int, default=64)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    import torch

    from .checkpoint import load_checkpoint
    from .config import detect_version, shipped_config_path, spec_from_config
    from .loading import build_image_encoder, build_vae
    from .training.config import ConfigError, load_config
    from .training.data_readers import DatasetError, read_dataset
    from .training.latent_cache import build_latent_cache

    try:
        cfg = load_config(args.config, args.overrides)
        if not cfg.data.latent_cache:
            raise ConfigError("set data.latent_cache=<new folder> (where the cache is written)")
        objects = read_dataset(cfg.data.root, cfg.data.format, cfg.data.meta, cfg.data.hi3d_elevations, cfg.data.hi3d_views_per_ring)
        if cfg.data.max_objects:
            objects = objects[: cfg.data.max_objects]
        sd = load_checkpoint(cfg.pretrained)
        version = detect_version(sd, cfg.pretrained)
        spec = spec_from_config(cfg.original_config or shipped_config_path(version), version)
        vae = build_vae(sd, spec)[0].eval()
        enc = build_image_encoder(sd, spec)[0].eval()
        del sd
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        vae.to(device)
        enc.to(device)
        out = build_latent_cache(cfg.data.latent_cache, objects, vae, enc, cfg.data.resolution, cfg.pretrained, args.objects_per_shard)
    except (ConfigError, DatasetError, FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"latent cache of {len(objects)} objects written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
