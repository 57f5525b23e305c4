"""Analytic coloured-primitive objects: exact ray casting, surface sampling and distances in NumPy.

Used to make the bundled example (`scripts/make_example.py`) and the ground truth of the
reconstruction benchmark (`benchmarks/bench_reconstruction.py`). World axes follow docs/architecture.md §3
(z up); cameras use OpenGL axes. Surfaces are unlit: the colour seen is the surface colour
(albedo), so a reconstructed texture can be compared with it directly.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np

INF = np.float64(np.inf)


@dataclass
class Primitive:
    """A solid sphere, axis-aligned box or z-aligned capped cylinder with a smoothly varying colour."""

    kind: str  # "sphere" | "box" | "cylinder"
    center: tuple
    # sphere: (radius,); box: (half_x, half_y, half_z); cylinder: (radius, half_height)
    size: tuple
    color: tuple
    # colour = clip(color + pattern_amp * sin(pattern_freq * (p . pattern_dir) + pattern_phase))
    pattern_dir: tuple = (0.0, 0.0, 1.0)
    pattern_freq: float = 6.0
    pattern_amp: float = 0.15
    pattern_phase: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("sphere", "box", "cylinder"):
            raise ValueError(f"Unknown primitive kind '{self.kind}'.")

    # ------------------------------------------------------------------ geometry
    def _local(self, p: np.ndarray) -> np.ndarray:
        return p - np.asarray(self.center, dtype=np.float64)

    def sdf(self, p: np.ndarray) -> np.ndarray:
        """Exact signed distance (negative inside) of points (...,3)."""
        q = self._local(p)
        if self.kind == "sphere":
            return np.linalg.norm(q, axis=-1) - self.size[0]
        if self.kind == "box":
            d = np.abs(q) - np.asarray(self.size)
            outside = np.linalg.norm(np.maximum(d, 0.0), axis=-1)
            return outside + np.minimum(d.max(axis=-1), 0.0)
        r, h = self.size
        d = np.stack([np.linalg.norm(q[..., :2], axis=-1) - r, np.abs(q[..., 2]) - h], axis=-1)
        return np.linalg.norm(np.maximum(d, 0.0), axis=-1) + np.minimum(d.max(axis=-1), 0.0)

    def intersect(self, o: np.ndarray, d: np.ndarray) -> np.ndarray:
        """Entry distance t >= 0 of rays (N,3),(N,3) (d unit length) into the solid; inf on a miss."""
        q = self._local(o)
        t = np.full(len(o), INF)
        if self.kind == "sphere":
            b = (q * d).sum(-1)
            c = (q * q).sum(-1) - self.size[0] ** 2
            disc = b * b - c
            hit = disc >= 0
            s = np.sqrt(np.where(hit, disc, 0.0))
            t0, t1 = -b - s, -b + s
            ok = hit & (t1 >= 0)
            t[ok] = np.maximum(t0[ok], 0.0)
            return t
        if self.kind == "box":
            half = np.asarray(self.size)
            with np.errstate(divide="ignore", invalid="ignore"):
                inv = 1.0 / d
                ta = (-half - q) * inv
                tb = (half - q) * inv
            tmin = np.nanmax(np.minimum(ta, tb), axis=-1)
            tmax = np.nanmin(np.maximum(ta, tb), axis=-1)
            ok = (tmax >= np.maximum(tmin, 0.0))
            t[ok] = np.maximum(tmin[ok], 0.0)
            return t
        r, h = self.size
        # infinite cylinder interval, intersected with the slab |z| <= h
        a = d[:, 0] ** 2 + d[:, 1] ** 2
        b = q[:, 0] * d[:, 0] + q[:, 1] * d[:, 1]
        c = q[:, 0] ** 2 + q[:, 1] ** 2 - r * r
        disc = b * b - a * c
        side_ok = (a > 1e-12) & (disc >= 0)
        s = np.sqrt(np.where(side_ok, disc, 0.0))
        safe_a = np.where(a > 1e-12, a, 1.0)
        # default: the ray misses the infinite cylinder (empty interval)
        c0 = np.where(side_ok, (-b - s) / safe_a, INF)
        c1 = np.where(side_ok, (-b + s) / safe_a, -INF)
        inside_parallel = (a <= 1e-12) & (c <= 0)  # ray along z inside the disc: the whole line
        c0 = np.where(inside_parallel, -INF, c0)
        c1 = np.where(inside_parallel, INF, c1)
        with np.errstate(divide="ignore", invalid="ignore"):
            za = (-h - q[:, 2]) / d[:, 2]
            zb = (h - q[:, 2]) / d[:, 2]
        flat = np.abs(d[:, 2]) < 1e-12
        z0 = np.where(flat, np.where(np.abs(q[:, 2]) <= h, -INF, INF), np.minimum(za, zb))
        z1 = np.where(flat, np.where(np.abs(q[:, 2]) <= h, INF, -INF), np.maximum(za, zb))
        tmin = np.maximum(c0, z0)
        tmax = np.minimum(c1, z1)
        ok = tmax >= np.maximum(tmin, 0.0)
        t[ok] = np.maximum(tmin[ok], 0.0)
        return t

    def area(self) -> float:
        if self.kind == "sphere":
            return 4 * math.pi * self.size[0] ** 2
        if self.kind == "box":
            x, y, z = (2 * s for s in self.size)
            return 2 * (x * y + y * z + z * x)
        r, h = self.size
        return 2 * math.pi * r * (2 * h) + 2 * math.pi * r * r

    def sample_surface(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """n points uniformly distributed (by area) on the primitive's surface."""
        c = np.asarray(self.center)
        if self.kind == "sphere":
            v = rng.normal(size=(n, 3))
            return c + self.size[0] * v / np.linalg.norm(v, axis=-1, keepdims=True)
        if self.kind == "box":
            half = np.asarray(self.size)
            areas = np.array([half[1] * half[2], half[0] * half[2], half[0] * half[1]])
            axis = rng.choice(3, size=n, p=areas / areas.sum())
            p = rng.uniform(-1, 1, size=(n, 3)) * half
            sign = rng.choice([-1.0, 1.0], size=n)
            p[np.arange(n), axis] = sign * half[axis]
            return c + p
        r, h = self.size
        side, cap = 2 * math.pi * r * 2 * h, 2 * math.pi * r * r
        on_side = rng.uniform(size=n) < side / (side + cap)
        ang = rng.uniform(0, 2 * math.pi, size=n)
        rad = np.where(on_side, r, r * np.sqrt(rng.uniform(size=n)))
        z = np.where(on_side, rng.uniform(-h, h, size=n), rng.choice([-h, h], size=n))
        return c + np.stack([rad * np.cos(ang), rad * np.sin(ang), z], axis=-1)

    def color_at(self, p: np.ndarray) -> np.ndarray:
        direction = np.asarray(self.pattern_dir, dtype=np.float64)
        direction = direction / np.linalg.norm(direction)
        wave = np.sin(self.pattern_freq * (p @ direction) + self.pattern_phase)
        return np.clip(np.asarray(self.color)[None] + self.pattern_amp * wave[:, None], 0.0, 1.0)


@dataclass
class Scene:
    """A union of primitives."""

    primitives: list = field(default_factory=list)

    def sdf(self, p: np.ndarray) -> np.ndarray:
        """Signed distance of the union (exact outside, a bound inside)."""
        return np.min(np.stack([prim.sdf(p) for prim in self.primitives]), axis=0)

    def intersect(self, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """First hit distance (inf on a miss) and the index of the primitive hit (-1 on a miss)."""
        ts = np.stack([prim.intersect(o, d) for prim in self.primitives])
        index = ts.argmin(axis=0)
        t = ts[index, np.arange(len(o))]
        return t, np.where(np.isfinite(t), index, -1)

    def color_at(self, p: np.ndarray, index: np.ndarray) -> np.ndarray:
        out = np.zeros((len(p), 3))
        for i, prim in enumerate(self.primitives):
            sel = index == i
            if sel.any():
                out[sel] = prim.color_at(p[sel])
        return out

    def owner(self, p: np.ndarray) -> np.ndarray:
        """Index of the primitive whose surface is nearest to each point."""
        return np.argmin(np.stack([np.abs(prim.sdf(p)) for prim in self.primitives]), axis=0)

    def surface_color(self, p: np.ndarray) -> np.ndarray:
        """Colour of the surface at (or nearest to) points p."""
        return self.color_at(p, self.owner(p))

    def sample_surface(self, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """n points uniformly on the boundary of the union (parts inside another primitive removed),
        and the index of the primitive each lies on."""
        rng = np.random.default_rng(seed)
        areas = np.array([prim.area() for prim in self.primitives])
        points, owners, have = [], [], 0
        while have < n:
            counts = rng.multinomial(2 * (n - have) + 1000, areas / areas.sum())
            for i, (prim, k) in enumerate(zip(self.primitives, counts)):
                p = prim.sample_surface(int(k), rng)
                others = [q.sdf(p) for j, q in enumerate(self.primitives) if j != i]
                keep = np.all(np.stack(others) > 0, axis=0) if others else np.ones(len(p), bool)
                points.append(p[keep])
                owners.append(np.full(int(keep.sum()), i))
                have += int(keep.sum())
        perm = rng.permutation(have)[:n]
        return np.concatenate(points)[perm], np.concatenate(owners)[perm]

    def bounding_radius(self) -> float:
        pts, _ = self.sample_surface(20000, seed=1)
        return float(np.linalg.norm(pts, axis=-1).max())

    def to_json(self) -> str:
        return json.dumps([asdict(p) for p in self.primitives], indent=1)

    @staticmethod
    def from_json(text: str) -> "Scene":
        return Scene([Primitive(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
                      for d in json.loads(text)])


def example_scene() -> Scene:
    """The bundled example: a snowman-ish toy — a box base, a sphere body, a cylinder chimney."""
    return Scene([
        Primitive("box", (0.0, 0.0, -0.26), (0.30, 0.22, 0.10), (0.85, 0.35, 0.20),
                  pattern_dir=(1.0, 0.3, 0.0), pattern_freq=7.0, pattern_amp=0.12),
        Primitive("sphere", (0.0, 0.0, 0.02), (0.22,), (0.25, 0.55, 0.85),
                  pattern_dir=(0.0, 0.0, 1.0), pattern_freq=9.0, pattern_amp=0.15, pattern_phase=0.5),
        Primitive("cylinder", (0.20, 0.10, 0.10), (0.07, 0.22), (0.30, 0.75, 0.30),
                  pattern_dir=(0.0, 0.0, 1.0), pattern_freq=10.0, pattern_amp=0.15),
    ])


def random_scene(seed: int, n_primitives: Optional[int] = None, target_radius: float = 0.5) -> Scene:
    """An unseen object of the same kind: 3-4 overlapping random primitives, scaled to `target_radius`."""
    rng = np.random.default_rng(seed)
    n = n_primitives or int(rng.integers(3, 5))
    prims = []
    for i in range(n):
        kind = ["sphere", "box", "cylinder"][int(rng.integers(0, 3))] if i else "sphere"
        center = tuple(rng.uniform(-0.18, 0.18, size=3)) if i else (0.0, 0.0, 0.0)
        if kind == "sphere":
            size = (float(rng.uniform(0.15, 0.28)),)
        elif kind == "box":
            size = tuple(float(v) for v in rng.uniform(0.08, 0.25, size=3))
        else:
            size = (float(rng.uniform(0.06, 0.16)), float(rng.uniform(0.1, 0.25)))
        color = tuple(float(v) for v in rng.uniform(0.2, 0.8, size=3))
        direction = rng.normal(size=3)
        prims.append(Primitive(kind, tuple(float(v) for v in center), size, color,
                               pattern_dir=tuple(float(v) for v in direction / np.linalg.norm(direction)),
                               pattern_freq=float(rng.uniform(5, 10)), pattern_amp=0.15,
                               pattern_phase=float(rng.uniform(0, 2 * math.pi))))
    scene = Scene(prims)
    scale = target_radius / scene.bounding_radius()
    for p in scene.primitives:
        p.center = tuple(c * scale for c in p.center)
        p.size = tuple(s * scale for s in p.size)
        # keep the colour pattern's wavelength relative to the object size
        p.pattern_freq = p.pattern_freq / scale
    return scene


# ---------------------------------------------------------------------------- cameras and rendering
def render(scene: Scene, c2w: np.ndarray, size: int, fov_deg: float, supersample: int = 3) -> np.ndarray:
    """RGBA float image (size,size,4), straight (not premultiplied) colour, alpha = coverage."""
    focal = 0.5 * size / math.tan(math.radians(fov_deg) / 2)
    s = supersample
    offsets = (np.arange(s) + 0.5) / s
    px = (np.arange(size)[:, None] + offsets[None]).reshape(-1)  # sub-pixel coordinates
    jj, ii = np.meshgrid(px, px, indexing="ij")
    dirs = np.stack([(ii - size / 2) / focal, -(jj - size / 2) / focal, -np.ones_like(ii)], axis=-1)
    dirs = dirs.reshape(-1, 3) @ c2w[:3, :3].T
    dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
    origins = np.broadcast_to(c2w[:3, 3], dirs.shape)
    t, index = scene.intersect(origins, dirs)
    hit = index >= 0
    rgb = np.zeros((len(t), 3))
    rgb[hit] = scene.color_at(origins[hit] + t[hit, None] * dirs[hit], index[hit])
    rgba = np.concatenate([rgb * hit[:, None], hit[:, None].astype(np.float64)], axis=-1)
    rgba = rgba.reshape(size, s, size, s, 4).mean(axis=(1, 3))
    alpha = rgba[..., 3:]
    rgb = np.where(alpha > 0, rgba[..., :3] / np.maximum(alpha, 1e-8), 0.0)
    return np.concatenate([rgb, alpha], axis=-1)
