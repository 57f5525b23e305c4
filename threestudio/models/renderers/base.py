"""Renderer bases: hold geometry, material and background without registering them as submodules."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Callable

import torch

from threestudio.utils.base import BaseModule
from threestudio.utils.batch import RENDER_INPUTS


@dataclass
class _SubModules:
    # a plain container: the system owns these modules (and their parameters/updates); the
    # renderer only uses them, so they must not appear twice in state dicts or optimizers
    geometry: Any
    material: Any
    background: Any


class Renderer(BaseModule):
    # the camera-batch keys forward() takes (threestudio.utils.batch.render_inputs(batch, renderer.inputs))
    inputs: tuple[str, ...] = RENDER_INPUTS

    @dataclass
    class Config(BaseModule.Config):
        radius: float = 1.0

    cfg: Config

    def __init__(self, cfg: Any = None, *args: Any, config_path: Optional[str] = None, **kwargs: Any) -> None:
        # kept so that configure() can name keys as the user wrote them (e.g. system.renderer.radius)
        self.config_path = config_path or "renderer"
        super().__init__(cfg, *args, config_path=config_path, **kwargs)

    def configure(self, geometry: Any, material: Any, background: Any) -> None:
        self.sub_modules = _SubModules(geometry, material, background)
        r = self.cfg.radius
        self.register_buffer("bbox", torch.tensor([[-r, -r, -r], [r, r, r]], dtype=torch.float32))

    def forward(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        raise NotImplementedError

    @property
    def geometry(self) -> Any:
        return self.sub_modules.geometry

    @property
    def material(self) -> Any:
        return self.sub_modules.material

    @property
    def background(self) -> Any:
        return self.sub_modules.background


class VolumeRenderer(Renderer):
    pass


class Rasterizer(Renderer):
    pass


def chunk_batch(fn: Callable[..., Any], chunk_size: int, *args: Any, **kwargs: Any) -> Any:
    """Call fn on slices of its tensor arguments (along dim 0) and concatenate the results.

    fn returns a tensor, or a dict / tuple of tensors (None entries allowed). chunk_size <= 0 calls fn once.
    """
    tensors = [a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor)]
    if chunk_size <= 0 or not tensors or tensors[0].shape[0] <= chunk_size:
        return fn(*args, **kwargs)
    n = tensors[0].shape[0]

    def cut(a: Any, i: int) -> Any:
        return a[i:i + chunk_size] if isinstance(a, torch.Tensor) else a

    parts = [fn(*[cut(a, i) for a in args], **{k: cut(v, i) for k, v in kwargs.items()})
             for i in range(0, n, chunk_size)]
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts, dim=0)
    if isinstance(first, dict):
        return {k: (None if first[k] is None else torch.cat([p[k] for p in parts], dim=0)) for k in first}
    if isinstance(first, (tuple, list)):
        return type(first)(None if first[j] is None else torch.cat([p[j] for p in parts], dim=0)
                           for j in range(len(first)))
    raise TypeError(f"chunk_batch: unsupported return type {type(first).__name__}.")
