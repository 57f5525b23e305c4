"""Validate a fine-tuning dataset before training: every malformed meta line, bad folder and unreadable image.

    python -m sv3d.check_dataset --root dummy_objaverse --meta dummy_objaverse/svd_meta.jsonl --num_frames 7
    python -m sv3d.check_dataset --root /data/hi3d --format hi3d
    python -m sv3d.check_dataset --root /data/orbits --format transforms

Exit status 0 when the dataset is usable, 1 when problems were found (each printed with its file and line).
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional, Sequence

from PIL import Image

from .training.data_readers import FORMATS, HI3D_ELEVATIONS, DatasetError, read_dataset


def check_dataset(root: str, meta: Optional[str] = None, fmt: str = "auto", num_frames: Optional[int] = None,
                  hi3d_elevations: Sequence[float] = HI3D_ELEVATIONS, hi3d_views_per_ring: int = 16,
                  open_images: bool = True):
    """(objects, problems): every problem as a message naming its file (and line for meta files)."""
    problems: List[str] = []
    try:
        objects = read_dataset(root, fmt, meta, hi3d_elevations, hi3d_views_per_ring, errors=problems)
    except DatasetError as exc:
        return [], problems + [str(exc)]
    for obj in objects:
        for ring in obj.rings:
            if num_frames and len(ring.image_paths) < num_frames:
                problems.append(f"object {obj.name!r}: a ring of {len(ring.image_paths)} views, fewer than num_frames={num_frames}")
            for path in ring.image_paths if open_images else ():
                try:
                    with Image.open(path) as im:
                        im.verify()
                except FileNotFoundError:
                    problems.append(f"{path}: missing (object {obj.name!r})")
                except Exception as exc:  # noqa: BLE001 - any decoding failure is a problem to report
                    problems.append(f"{path}: unreadable image ({type(exc).__name__}: {exc})")
    return objects, problems


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sv3d.check_dataset", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="image root / dataset folder")
    p.add_argument("--meta", default=None, help="svd_meta.jsonl (default <root>/svd_meta.jsonl for the svd_meta format)")
    p.add_argument("--format", default="auto", choices=FORMATS)
    p.add_argument("--num_frames", type=int, default=None, help="views per training clip (checks ring lengths)")
    p.add_argument("--hi3d_elevations", type=float, nargs="+", default=list(HI3D_ELEVATIONS))
    p.add_argument("--hi3d_views_per_ring", type=int, default=16)
    args = p.parse_args(argv)
    objects, problems = check_dataset(args.root, args.meta, args.format, args.num_frames, args.hi3d_elevations, args.hi3d_views_per_ring)
    for msg in problems:
        print(f"error: {msg}")
    views = sum(o.num_views for o in objects)
    print(f"{len(objects)} objects, {views} views, {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
