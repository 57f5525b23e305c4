"""A tiny procedural multiview dataset rendered here (no downloads): RGBA orbits of coloured ellipsoids, written
in the SVD-MV reference layout (`<root>/<id>/NNN.png` + `svd_meta.jsonl`), Hi3D folders or transforms.json orbits.

The renderer is a few lines of numpy ray casting (orthographic views of an ellipsoid whose colour depends on the
surface direction, Lambert-shaded), enough to give every view a distinct, learnable appearance.
"""

from __future__ import annotations

import json
import math
import os
from typing import List, Sequence

import numpy as np
from PIL import Image


def render_view(size: int, elevation_deg: float, azimuth_deg: float, radii=(0.8, 0.55, 0.45), hue: float = 0.0) -> np.ndarray:
    """(size, size, 4) uint8 RGBA orthographic render of an axis-aligned ellipsoid seen from (elevation, azimuth)
    in the z-up world (camera position direction (cos e cos a, cos e sin a, sin e))."""
    e, a = math.radians(elevation_deg), math.radians(azimuth_deg)
    back = np.array([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)])
    right = np.cross([0.0, 0.0, 1.0], back)
    right = right / (np.linalg.norm(right) + 1e-12) if np.linalg.norm(right) > 1e-6 else np.array([-math.sin(a), math.cos(a), 0.0])
    up = np.cross(back, right)
    u = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    uu, vv = np.meshgrid(u, -u)
    origin = 3.0 * back[None, None] + uu[..., None] * right + vv[..., None] * up  # rays along -back
    r = np.asarray(radii, dtype=np.float64)
    o, d = origin / r, -back / r
    qa = float(d @ d)
    qb = 2.0 * (o @ d)
    qc = (o * o).sum(-1) - 1.0
    disc = qb * qb - 4 * qa * qc
    hit = disc > 0
    t = (-qb - np.sqrt(np.maximum(disc, 0))) / (2 * qa)
    p = origin + t[..., None] * (-back)
    n = p / (r * r)
    n /= np.linalg.norm(n, axis=-1, keepdims=True) + 1e-12
    base = 0.5 + 0.5 * np.stack([np.sign(n[..., 0]) * 0.8, np.cos(3 * n[..., 1] + hue), np.sign(n[..., 2]) * 0.6], -1)
    light = np.clip(n @ np.array([0.4, 0.3, 0.866]), 0.0, 1.0)[..., None] * 0.7 + 0.3
    rgb = np.clip(base * light, 0, 1)
    out = np.zeros((size, size, 4), np.uint8)
    out[..., :3] = np.where(hit[..., None], rgb * 255, 0).astype(np.uint8)
    out[..., 3] = np.where(hit, 255, 0).astype(np.uint8)
    return out


def write_svd_meta_dataset(root: str, num_objects: int = 2, num_views: int = 21, size: int = 64,
                           elevations: Sequence[float] = (20.0, 5.0), literal_lines: bool = False) -> str:
    """`<root>/<NNN>/<VVV>.png` + `<root>/svd_meta.jsonl` (reference layout); returns the meta path.
    `literal_lines` writes Python dict literals (as the reference's `str(dict)`) instead of JSON."""
    os.makedirs(root, exist_ok=True)
    lines: List[str] = []
    for k in range(num_objects):
        name = f"{k + 1:03d}"
        os.makedirs(os.path.join(root, name), exist_ok=True)
        elev = float(elevations[k % len(elevations)])
        paths = []
        for v in range(num_views):
            rel = f"{name}/{v:03d}.png"
            Image.fromarray(render_view(size, elev, 360.0 * v / num_views, hue=1.7 * k)).save(os.path.join(root, rel), optimize=True)
            paths.append(rel)
        entry = {"image_path": paths, "elevation": [elev] * num_views}
        lines.append(str(entry) if literal_lines else json.dumps(entry))
    meta = os.path.join(root, "svd_meta.jsonl")
    with open(meta, "w") as f:
        f.write("\n".join(lines) + "\n")
    return meta


def write_hi3d_dataset(root: str, num_objects: int = 1, elevations: Sequence[float] = (-10, 0, 10, 20, 30, 40),
                       views_per_ring: int = 16, size: int = 32) -> str:
    """`<root>/images/<uid>/NNN.png`: rings of `views_per_ring` views per elevation, in file order."""
    for k in range(num_objects):
        folder = os.path.join(root, "images", f"obj{k}")
        os.makedirs(folder, exist_ok=True)
        i = 0
        for e in elevations:
            for v in range(views_per_ring):
                Image.fromarray(render_view(size, e, 360.0 * v / views_per_ring, hue=k)).save(os.path.join(folder, f"{i:03d}.png"))
                i += 1
    return root


def write_transforms_dataset(root: str, num_views: int = 8, elevation: float = 15.0, size: int = 32, distance: float = 2.0) -> str:
    """One orbit folder with `transforms.json` (z-up world, OpenGL c2w) and RGBA PNGs."""
    from ..cameras import write_transforms_json

    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    names, az = [], []
    for v in range(num_views):
        a = 360.0 * v / num_views
        names.append(f"images/{v:03d}.png")
        az.append(a)
        Image.fromarray(render_view(size, elevation, a)).save(os.path.join(root, names[-1]))
    write_transforms_json(os.path.join(root, "transforms.json"), names, [elevation] * num_views, az, 40.0, distance, size, size)
    return root


if __name__ == "__main__":  # python -m sv3d.training.dummy_data <root> [num_objects] [num_views] [size]
    import sys

    args = sys.argv[1:]
    if not args:
        raise SystemExit("usage: python -m sv3d.training.dummy_data <root> [num_objects=2] [num_views=21] [size=64]")
    n, v, s = (int(a) for a in (args[1:] + ["2", "21", "64"][len(args) - 1 :])[:3])
    print(write_svd_meta_dataset(args[0], n, v, s))
