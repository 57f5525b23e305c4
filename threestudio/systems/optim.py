"""Optimizers and LR schedulers built from config, with parameter groups by dotted module path."""
from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn as nn

from threestudio.utils.config import ConfigError, config_to_primitive

logger = logging.getLogger(__name__)


def _parameters_at(model: nn.Module, path: str) -> list[nn.Parameter]:
    try:
        return list(model.get_submodule(path).parameters())
    except AttributeError:
        pass
    try:
        return [model.get_parameter(path)]
    except AttributeError:
        children = ", ".join(name for name, _ in model.named_children()) or "none"
        raise ConfigError(
            f"system.optimizer.params: '{path}' is neither a submodule nor a parameter of the system. "
            f"Top-level submodules: {children}."
        ) from None


def parse_optimizer(config: Any, model: nn.Module) -> torch.optim.Optimizer:
    """Build any `torch.optim` optimizer.

    config: {name: AdamW, args: {...}, params: {"geometry.encoding": {lr: 0.01}, "background": {lr: 1e-3}}}.
    Without `params`, every trainable parameter is in one group. Frozen parameters are never included.
    """
    config = config_to_primitive(config) or {}
    name = config.get("name", "Adam")
    optim_cls = getattr(torch.optim, name, None)
    if not (isinstance(optim_cls, type) and issubclass(optim_cls, torch.optim.Optimizer)):
        raise ConfigError(f"system.optimizer.name: '{name}' is not an optimizer in torch.optim.")
    args = dict(config.get("args", {}))
    for key in ("betas",):
        if key in args:
            args[key] = tuple(args[key])
    groups_cfg = config.get("params")
    if groups_cfg:
        groups, seen = [], {}
        for path, group_args in groups_cfg.items():
            params = [p for p in _parameters_at(model, path) if p.requires_grad]
            for p in params:
                if id(p) in seen:
                    raise ConfigError(
                        f"system.optimizer.params: '{path}' overlaps '{seen[id(p)]}'; each parameter can be in one group."
                    )
                seen[id(p)] = path
            groups.append({"params": params, "name": path, **(group_args or {})})
        left_out = sorted({n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad and id(p) not in seen})
        if left_out:
            logger.warning("Trainable parameters not in any optimizer group (they stay fixed): %s", ", ".join(left_out))
    else:
        groups = [{"params": [p for p in model.parameters() if p.requires_grad], "name": "all"}]
    try:
        return optim_cls(groups, **args)
    except TypeError as e:
        raise ConfigError(f"system.optimizer.args: {e}") from None


def parse_scheduler(config: Any, optimizer: torch.optim.Optimizer) -> dict:
    """Build an LR scheduler dict for Lightning: {name, args, interval} or SequentialLR/ChainedScheduler
    with nested `schedulers` (and `milestones` for SequentialLR)."""
    config = config_to_primitive(config) or {}
    interval = config.get("interval", "step")
    if interval not in ("step", "epoch"):
        raise ConfigError(f"system.scheduler.interval must be 'step' or 'epoch', got '{interval}'.")
    return {"scheduler": _build_scheduler(config, optimizer), "interval": interval}


def _build_scheduler(config: dict, optimizer: torch.optim.Optimizer) -> Any:
    name = config.get("name")
    sched = torch.optim.lr_scheduler
    if name == "SequentialLR":
        subs = [_build_scheduler(c, optimizer) for c in config["schedulers"]]
        return sched.SequentialLR(optimizer, schedulers=subs, milestones=config["milestones"])
    if name == "ChainedScheduler":
        return sched.ChainedScheduler([_build_scheduler(c, optimizer) for c in config["schedulers"]])
    cls = getattr(sched, name or "", None)
    if not isinstance(cls, type):
        raise ConfigError(f"system.scheduler.name: '{name}' is not a scheduler in torch.optim.lr_scheduler.")
    try:
        return cls(optimizer, **config.get("args", {}))
    except TypeError as e:
        raise ConfigError(f"system.scheduler.args for {name}: {e}") from None
