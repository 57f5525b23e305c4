from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn

from threestudio.systems.optim import parse_optimizer, parse_scheduler
from threestudio.utils.base import BaseModule, Updateable
from threestudio.utils.config import ConfigError


class Geometry(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoding = nn.Linear(3, 4)
        self.density_network = nn.Linear(4, 1)


class System(nn.Module):
    def __init__(self):
        super().__init__()
        self.geometry = Geometry()
        self.background = nn.Linear(3, 3)
        self.guidance = nn.Linear(3, 3)
        self.guidance.requires_grad_(False)


def test_groups_by_dotted_path_with_their_own_lr():
    model = System()
    opt = parse_optimizer({
        "name": "AdamW",
        "args": {"betas": [0.9, 0.99], "eps": 1e-15},
        "params": {"geometry.encoding": {"lr": 0.01}, "geometry.density_network": {"lr": 0.001},
                   "background": {"lr": 0.002}},
    }, model)
    assert isinstance(opt, torch.optim.AdamW)
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["geometry.encoding"]["lr"] == 0.01
    assert groups["geometry.density_network"]["lr"] == 0.001
    assert groups["background"]["lr"] == 0.002
    assert groups["background"]["betas"] == (0.9, 0.99)
    assert {id(p) for p in groups["geometry.encoding"]["params"]} == {id(p) for p in model.geometry.encoding.parameters()}


def test_without_params_all_trainable_parameters_and_no_frozen_ones():
    model = System()
    opt = parse_optimizer({"name": "SGD", "args": {"lr": 0.1}}, model)
    ids = {id(p) for g in opt.param_groups for p in g["params"]}
    assert ids == {id(p) for p in model.parameters() if p.requires_grad}
    assert not ids & {id(p) for p in model.guidance.parameters()}


def test_unknown_optimizer_and_path_errors():
    with pytest.raises(ConfigError, match="'Adamm' is not an optimizer in torch.optim"):
        parse_optimizer({"name": "Adamm"}, System())
    with pytest.raises(ConfigError, match="'geometry.encodin' is neither a submodule nor a parameter.*geometry"):
        parse_optimizer({"name": "Adam", "params": {"geometry.encodin": {"lr": 1}}}, System())
    with pytest.raises(ConfigError, match="overlaps"):
        parse_optimizer({"name": "Adam", "params": {"geometry": {"lr": 1}, "geometry.encoding": {"lr": 2}}}, System())


def test_schedulers_including_sequential():
    opt = parse_optimizer({"name": "SGD", "args": {"lr": 1.0}}, System())
    sched = parse_scheduler({
        "name": "SequentialLR", "interval": "step", "milestones": [2],
        "schedulers": [{"name": "LinearLR", "args": {"start_factor": 0.5, "total_iters": 2}},
                       {"name": "ExponentialLR", "args": {"gamma": 0.5}}],
    }, opt)
    assert sched["interval"] == "step"
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched["scheduler"].step()
    assert lrs == pytest.approx([0.5, 0.75, 1.0, 0.5])
    with pytest.raises(ConfigError, match="'Nope' is not a scheduler"):
        parse_scheduler({"name": "Nope"}, opt)


class Counter(BaseModule):
    @dataclass
    class Config(BaseModule.Config):
        pass

    def configure(self):
        self.seen = []
        self.ended = []

    def update_step(self, epoch, global_step, on_load_weights=False):
        self.seen.append(global_step)

    def update_step_end(self, epoch, global_step):
        self.ended.append(global_step)


class PlainObject(Updateable):
    def __init__(self):
        self.seen = []

    def update_step(self, epoch, global_step, on_load_weights=False):
        self.seen.append(global_step)


class Parent(BaseModule):
    def configure(self):
        self.inner = Counter()
        # an Updateable inside a plain container is still reached
        self.group = nn.ModuleList([nn.Linear(1, 1), Counter()])
        self.processor = PlainObject()

    def extra_updateables(self):
        return [self.processor]


def test_update_step_reaches_nested_and_declared_children_once():
    parent = Parent()
    parent.do_update_step(0, 7)
    parent.do_update_step_end(0, 7)
    assert parent.inner.seen == [7] and parent.inner.ended == [7]
    assert parent.group[1].seen == [7]
    assert parent.processor.seen == [7]


class PortedFromThreestudio(BaseModule):
    """A module written for threestudio: it overrides the `update_step` hook and owns a child."""

    def configure(self):
        self.child = Counter()
        self.order = []

    def update_step(self, epoch, global_step, on_load_weights=False):
        # threestudio's contract: the children are already at this step when the hook runs
        self.order.append((global_step, list(self.child.seen)))


def test_overriding_the_hook_keeps_the_children_scheduled_as_in_threestudio():
    module = PortedFromThreestudio()
    module.do_update_step(0, 3)
    module.do_update_step(0, 4)
    module.do_update_step_end(0, 4)
    assert module.child.seen == [3, 4]
    assert module.child.ended == [4]
    assert module.order == [(3, [3]), (4, [3, 4])]  # children first, then the module's own hook
