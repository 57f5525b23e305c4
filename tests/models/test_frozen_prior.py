"""FrozenPrior: lazy, built once, frozen, outside the module tree, released on demand."""
from __future__ import annotations

import torch

from threestudio.models.guidance.frozen_prior import FrozenPrior
from threestudio.utils.base import BaseModule


class Holder(BaseModule):
    def configure(self) -> None:
        self.calls = []
        self.prior = FrozenPrior(self.build, device=torch.device("cpu"), name="toy")

    def build(self, device):
        self.calls.append(device)
        return torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5)).to(device)


def test_lazy_once_frozen_and_outside_the_module_tree():
    holder = Holder()
    assert holder.calls == [] and not holder.prior.loaded  # building the owner reads nothing
    model = holder.prior.get()
    assert holder.prior.get() is model and holder.calls == [torch.device("cpu")]
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    holder.train()  # what Lightning does: the prior stays in eval mode
    assert not model.training
    assert list(holder.state_dict()) == [] and list(holder.parameters()) == []
    holder.prior.release()
    assert not holder.prior.loaded
    assert holder.prior.get() is not model and len(holder.calls) == 2


def test_a_given_prior_is_used_and_frozen():
    given = torch.nn.Linear(2, 2)
    prior = FrozenPrior(lambda device: None, prior=given)
    assert prior.loaded and prior.get() is given and not given.weight.requires_grad
