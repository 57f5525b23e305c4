"""Moving, deforming procedural objects: `procedural_scene` primitives whose centres and sizes follow
smooth periodic functions of time t in [0, 1].

Used to make the bundled 4D example (`scripts/make_example_4d.py`) and the per-frame ground truth of
`benchmarks/bench_reconstruction_4d.py`. Every frame is an ordinary `procedural_scene.Scene` (exact ray
casting, surface sampling, colours), so the static tools apply frame by frame. Colours are attached to
the primitive (they move with it); a size change stretches the primitive (a non-rigid deformation).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from procedural_scene import Primitive, Scene, example_scene, random_scene


@dataclass
class PrimitiveMotion:
    """centre(t) = centre + offset * sin(2 pi (cycles t + phase));
    size(t) = size * (1 + stretch * sin(2 pi (cycles t + phase))) per size component."""

    offset: tuple = (0.0, 0.0, 0.0)
    stretch: tuple = (0.0,)
    cycles: float = 1.0
    phase: float = 0.0

    def wave(self, t: float) -> float:
        return math.sin(2.0 * math.pi * (self.cycles * t + self.phase))


@dataclass
class MovingScene:
    """A union of primitives, each with its own motion (same order)."""

    primitives: list = field(default_factory=list)
    motions: list = field(default_factory=list)

    def at(self, t: float) -> Scene:
        """The static scene at time t."""
        frame = []
        for prim, motion in zip(self.primitives, self.motions):
            w = motion.wave(t)
            center = tuple(c + o * w for c, o in zip(prim.center, motion.offset))
            stretch = list(motion.stretch) + [motion.stretch[-1]] * (len(prim.size) - len(motion.stretch))
            size = tuple(s * (1.0 + k * w) for s, k in zip(prim.size, stretch))
            # the colour pattern travels with the primitive: shift its phase by the displacement
            direction = np.asarray(prim.pattern_dir, dtype=np.float64)
            direction = direction / np.linalg.norm(direction)
            shift = float(np.dot(np.asarray(center) - np.asarray(prim.center), direction))
            frame.append(replace(prim, center=center, size=size,
                                 pattern_phase=prim.pattern_phase - prim.pattern_freq * shift))
        return Scene(frame)

    def bounding_radius(self, n_times: int = 12) -> float:
        return max(self.at(t).bounding_radius() for t in np.linspace(0.0, 1.0, n_times))

    def to_json(self) -> str:
        return json.dumps({"primitives": [asdict(p) for p in self.primitives],
                           "motions": [asdict(m) for m in self.motions]}, indent=1)

    @staticmethod
    def from_json(text: str) -> "MovingScene":
        data = json.loads(text)
        scene = Scene.from_json(json.dumps(data["primitives"]))
        motions = [PrimitiveMotion(**{k: tuple(v) if isinstance(v, list) else v for k, v in m.items()})
                   for m in data["motions"]]
        return MovingScene(scene.primitives, motions)


def example_moving_scene() -> MovingScene:
    """The bundled 4D example: the static example toy with a bobbing, breathing sphere, a chimney that slides
    and grows, and a base that squashes and stretches."""
    prims: list[Primitive] = example_scene().primitives
    motions = [
        PrimitiveMotion(offset=(0.0, 0.0, 0.0), stretch=(0.15, 0.15, -0.25), cycles=1.0, phase=0.0),  # box
        PrimitiveMotion(offset=(0.0, 0.0, 0.10), stretch=(0.12,), cycles=1.0, phase=0.25),  # sphere
        PrimitiveMotion(offset=(-0.06, 0.08, 0.0), stretch=(0.0, 0.3), cycles=1.0, phase=0.5),  # cylinder
    ]
    return MovingScene(prims, motions)


def random_moving_scene(seed: int, target_radius: float = 0.5) -> MovingScene:
    """An unseen moving object of the same kind: a `random_scene` whose parts (the first one excepted: it
    anchors the object) translate by up to ~0.1 and stretch by up to ~25%, each with its own phase."""
    static = random_scene(seed, target_radius=target_radius * 0.9)
    rng = np.random.default_rng(seed + 5000)
    motions = []
    for i, prim in enumerate(static.primitives):
        direction = rng.normal(size=3)
        direction = direction / np.linalg.norm(direction)
        amplitude = 0.0 if i == 0 else float(rng.uniform(0.05, 0.1))
        n_size = len(prim.size)
        motions.append(PrimitiveMotion(offset=tuple(float(v) for v in direction * amplitude),
                                       stretch=tuple(float(v) for v in rng.uniform(-0.25, 0.25, size=n_size)),
                                       cycles=1.0, phase=float(rng.uniform(0.0, 1.0))))
    return MovingScene(static.primitives, motions)
