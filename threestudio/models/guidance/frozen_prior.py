"""The one way guidance modules hold a frozen pretrained prior (a diffusers pipeline or a model).

`FrozenPrior` keeps the prior outside the nn.Module tree, so it is never trained, never written to
trial checkpoints, not switched to train mode by Lightning and not moved by it; it is built lazily,
on first use, so a system built for `--test`, `--validate` or `--export` never reads the prior's
checkpoint; and it knows its device.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Generic, Optional, TypeVar

import torch

from threestudio.utils.misc import cleanup, get_device

logger = logging.getLogger(__name__)

T = TypeVar("T")


def freeze(prior: Any) -> None:
    """eval() and requires_grad=False on the prior (an nn.Module) or on every nn.Module component of a pipeline."""
    components = getattr(prior, "components", None)
    if isinstance(prior, torch.nn.Module):
        modules = [prior]
    elif isinstance(components, dict):
        modules = list(components.values())
    else:  # a plain container of models
        modules = list(vars(prior).values()) if hasattr(prior, "__dict__") else []
    for module in modules:
        if isinstance(module, torch.nn.Module):
            module.eval()
            module.requires_grad_(False)


class FrozenPrior(Generic[T]):
    """A frozen prior built on first use by `loader(device)`, which returns it on `device`.

    `get()` builds (once) and returns it; `loaded` says whether it is built; `release()` frees it (a
    later `get()` builds it again). Not an nn.Module: an attribute holding it registers nothing.
    """

    def __init__(self, loader: Callable[[torch.device], T], device: Optional[torch.device] = None,
                 name: str = "prior", prior: Optional[T] = None) -> None:
        self._loader = loader
        self.device = torch.device(device) if device is not None else get_device()
        self.name = name
        self._prior: Optional[T] = None
        if prior is not None:  # an already built prior (tests, or a caller that shares one)
            freeze(prior)
            self._prior = prior

    @property
    def loaded(self) -> bool:
        return self._prior is not None

    def get(self) -> T:
        if self._prior is None:
            logger.info("Loading the frozen %s on %s", self.name, self.device)
            prior = self._loader(self.device)
            freeze(prior)
            self._prior = prior
        return self._prior

    def release(self) -> None:
        if self._prior is not None:
            self._prior = None
            cleanup()

    def __repr__(self) -> str:
        return f"FrozenPrior({self.name}, device={self.device}, loaded={self.loaded})"
