"""Shared helpers for the reconstruction tests: tiny procedural datasets and an analytic sphere field."""
from __future__ import annotations

import importlib.util
import os
import sys

import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPTS = os.path.join(REPO, "scripts")


def load_script(name: str):
    """Import scripts/<name>.py (scripts/ is not a package)."""
    if SCRIPTS not in sys.path:
        sys.path.insert(0, SCRIPTS)
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, os.path.join(SCRIPTS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def make_tiny_dataset(out: str, size: int = 24, n_train: int = 6, n_test: int = 2) -> str:
    """Example object rendered at `size`² without supersampling (pixel-centre rays, exact masks)."""
    make_example = load_script("make_example")
    scene = load_script("procedural_scene").example_scene()
    return make_example.make_dataset(out, scene, n_train=n_train, n_test=n_test, n_val=1, size=size, supersample=1)


class SphereField(torch.nn.Module):
    """A geometry stand-in: density = peak * sigmoid(sharpness * (radius - |x|)), features = colour(x)."""

    class Cfg:
        radius = 1.0
        isosurface_threshold = 25.0

    def __init__(self, sphere_radius: float = 0.5, peak: float = 100.0, sharpness: float = 200.0) -> None:
        super().__init__()
        self.cfg = self.Cfg()
        self.sphere_radius, self.peak, self.sharpness = sphere_radius, peak, sharpness

    def forward_density(self, points: torch.Tensor) -> torch.Tensor:
        r = points.norm(dim=-1, keepdim=True)
        return self.peak * torch.sigmoid(self.sharpness * (self.sphere_radius - r))

    def iso_radius(self, level: float) -> float:
        """Radius where the density equals `level`."""
        import math

        p = level / self.peak
        return self.sphere_radius - math.log(p / (1 - p)) / self.sharpness

    @staticmethod
    def color(points: torch.Tensor) -> torch.Tensor:
        return (points.clamp(-1, 1) + 1) / 2

    def export(self, points: torch.Tensor) -> dict:
        return {"features": points}


class IdentityMaterial:
    """A material stand-in: albedo = colour field of the features (points)."""

    def export(self, features: torch.Tensor) -> dict:
        return {"albedo": SphereField.color(features)}


def make_blob_trial(root: str, geometry_cfg: dict, step: int = 700) -> str:
    """A coarse trial folder as launch.py writes it (configs/parsed.yaml + ckpts/last.ckpt) holding an
    implicit-volume whose density is its initial blob (zeroed density MLP); returns the checkpoint path."""
    from omegaconf import OmegaConf

    from threestudio.utils.base import build_module

    geometry = build_module("implicit-volume", geometry_cfg, "system.geometry")
    with torch.no_grad():
        for p in geometry.density_network.parameters():
            p.zero_()
    os.makedirs(os.path.join(root, "configs"))
    os.makedirs(os.path.join(root, "ckpts"))
    OmegaConf.save({"system": {"geometry_type": "implicit-volume", "geometry": geometry_cfg}},
                   os.path.join(root, "configs", "parsed.yaml"))
    ckpt = os.path.join(root, "ckpts", "last.ckpt")
    torch.save({"state_dict": {f"geometry.{k}": v for k, v in geometry.state_dict().items()}, "epoch": 0,
                "global_step": step}, ckpt)
    return ckpt


def make_tiny_dataset_4d(out: str, size: int = 16, n_views: int = 2, n_holdout_views: int = 1, n_frames: int = 3,
                         layout: str = "diffusion2") -> str:
    """The moving example object at `size`², without supersampling, in either per-frame layout."""
    make_example_4d = load_script("make_example_4d")
    scene = load_script("procedural_motion").example_moving_scene()
    return make_example_4d.make_dataset_4d(out, scene, n_views=n_views, n_holdout_views=n_holdout_views,
                                           n_frames=n_frames, size=size, supersample=1, layout=layout)
