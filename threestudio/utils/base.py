"""Base classes: configurable objects and modules with per-step update hooks."""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch
import torch.nn as nn

from threestudio.utils.config import parse_structured
from threestudio.utils.misc import get_device, load_module_weights, load_partial_state_dict


class Updateable:
    """Something whose state follows the training step (schedules, occupancy grids, milestones).

    The names and order are threestudio's, so a module ported from threestudio works unchanged:
    the trainer calls `do_update_step` at the start of every training step and `do_update_step_end`
    after the optimizer step. Each first propagates to the object's Updateable children (as returned
    by `updateable_children()`) and then calls the object's own hook, `update_step[_end]`, which is
    what subclasses override. Overriding a hook never cuts the children off; override
    `do_update_step` only to change the propagation itself.
    """

    def do_update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        for child in self.updateable_children():
            child.do_update_step(epoch, global_step, on_load_weights=on_load_weights)
        self.update_step(epoch, global_step, on_load_weights=on_load_weights)

    def do_update_step_end(self, epoch: int, global_step: int) -> None:
        for child in self.updateable_children():
            child.do_update_step_end(epoch, global_step)
        self.update_step_end(epoch, global_step)

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        """Hook: this object's own per-step update (children are already updated)."""

    def update_step_end(self, epoch: int, global_step: int) -> None:
        """Hook: this object's own update after the optimizer step."""

    def updateable_children(self) -> Iterator["Updateable"]:
        """The nearest Updateable descendants in the nn.Module tree, plus `extra_updateables()`."""
        if isinstance(self, nn.Module):
            stack = list(self.children())
            while stack:
                module = stack.pop(0)
                if isinstance(module, Updateable):
                    yield module
                else:
                    stack.extend(module.children())
        yield from self.extra_updateables()

    def extra_updateables(self) -> list["Updateable"]:
        """Updateable objects that are not registered submodules (e.g. a prompt processor)."""
        return []


class BaseObject(Updateable):
    """A configurable object that is not an nn.Module."""

    @dataclass
    class Config:
        pass

    cfg: Config

    def __init__(self, cfg: Optional[Any] = None, *args: Any, config_path: Optional[str] = None,
                 **kwargs: Any) -> None:
        super().__init__()
        # config_path (e.g. "system.geometry") makes config errors name the key as the user wrote it
        self.cfg = parse_structured(self.Config, cfg, where=config_path or type(self).__name__)
        self.device = get_device()
        self.configure(*args, **kwargs)

    def configure(self, *args: Any, **kwargs: Any) -> None:
        pass


class BaseModule(nn.Module, Updateable):
    """A configurable nn.Module; `cfg.weights` optionally loads its parameters from a checkpoint."""

    @dataclass
    class Config:
        weights: Optional[str] = None

    cfg: Config

    def __init__(self, cfg: Optional[Any] = None, *args: Any, config_path: Optional[str] = None,
                 **kwargs: Any) -> None:
        super().__init__()
        # config_path (e.g. "system.geometry") makes config errors name the key as the user wrote it
        self.cfg = parse_structured(self.Config, cfg, where=config_path or type(self).__name__)
        self.configure(*args, **kwargs)
        if self.cfg.weights is not None:
            # format: path/to/weights.ckpt:module.name (":module.name" optional)
            path, _, prefix = self.cfg.weights.partition(":")
            state_dict, epoch, global_step = load_module_weights(path, module_name=prefix or None)
            load_partial_state_dict(self, state_dict, f"weights file '{path}'", f"{config_path or type(self).__name__}")
            self.do_update_step(epoch, global_step, on_load_weights=True)

    def configure(self, *args: Any, **kwargs: Any) -> None:
        pass

    @property
    def device(self) -> torch.device:
        """Where the module's parameters (or buffers) live; CPU for a module with neither."""
        for tensor in itertools.chain(self.parameters(), self.buffers()):
            return tensor.device
        return torch.device("cpu")


def build_module(type_name: str, cfg: Any, config_path: str, *args: Any, **kwargs: Any) -> Any:
    """Construct the registered class `type_name` from `cfg`; errors name `config_path`."""
    import threestudio

    cls = threestudio.find(type_name)
    return cls(cfg, *args, config_path=config_path, **kwargs)
