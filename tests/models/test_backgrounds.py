"""Backgrounds: solid-color-background, neural-environment-map-background."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from threestudio.utils.base import build_module
from threestudio.utils.config import ConfigError


def dirs(b=2, h=3, w=4):
    return F.normalize(torch.randn(b, h, w, 3), dim=-1)


def test_solid_color_fixed_learned_and_augmented():
    bg = build_module("solid-color-background", {"color": [0.2, 0.4, 0.6]}, "system.background")
    out = bg(dirs())
    assert out.shape == (2, 3, 4, 3)
    assert torch.allclose(out, torch.tensor([0.2, 0.4, 0.6]).expand(2, 3, 4, 3))
    assert len(list(bg.parameters())) == 0
    learned = build_module("solid-color-background", {"learned": True}, "system.background")
    learned(dirs()).sum().backward()
    assert torch.allclose(learned.env_color.grad, torch.full((3,), 24.0))
    aug = build_module("solid-color-background", {"random_aug": True, "random_aug_prob": 1.0}, "system.background")
    aug.train()
    out = aug(dirs())
    # one random colour per view, constant over the view's pixels
    assert torch.allclose(out, out[:, :1, :1].expand_as(out))
    assert not torch.allclose(out[0, 0, 0], torch.ones(3))
    aug.eval()
    assert torch.allclose(aug(dirs()), torch.ones(2, 3, 4, 3))
    with pytest.raises(ConfigError, match="system.background.color"):
        build_module("solid-color-background", {"color": [1.0, 1.0]}, "system.background")


def test_neural_environment_map_depends_on_direction():
    torch.manual_seed(0)
    bg = build_module("neural-environment-map-background", {}, "system.background")
    with torch.no_grad():
        for p in bg.parameters():
            p.normal_(0, 1.0)
    d = dirs(1, 8, 8)
    out = bg(d)
    values = out.detach()
    assert out.shape == (1, 8, 8, 3) and float(values.min()) >= 0 and float(values.max()) <= 1
    assert float(values.view(-1, 3).std(dim=0).max()) > 1e-3
    # same direction, same colour
    same = bg(d[:, :1, :1].expand(1, 8, 8, 3).contiguous())
    assert torch.allclose(same, same[:, :1, :1].expand_as(same))
    out.sum().backward()
    assert all(p.grad is not None for p in bg.parameters())


def test_neural_environment_map_eval_color_and_random_aug():
    bg = build_module("neural-environment-map-background",
                      {"eval_color": [1.0, 0.0, 0.5], "random_aug": True, "random_aug_prob": 1.0}, "system.background")
    bg.eval()
    assert torch.allclose(bg(dirs()), torch.tensor([1.0, 0.0, 0.5]).expand(2, 3, 4, 3))
    bg.train()
    out = bg(dirs())
    assert torch.allclose(out, out[:, :1, :1].expand_as(out))
    with pytest.raises(ConfigError, match="system.background.eval_color"):
        build_module("neural-environment-map-background", {"eval_color": [1.0]}, "system.background")


def test_environment_map_random_aug_per_view_or_shared():
    torch.manual_seed(0)
    for shared in (False, True):
        bg = build_module("neural-environment-map-background",
                          {"random_aug": True, "random_aug_prob": 1.0, "share_aug_bg": shared}, "system.background")
        bg.train()
        out = bg(dirs(4, 3, 5))
        assert torch.allclose(out, out[:, :1, :1].expand_as(out))  # solid per view
        per_view = out[:, 0, 0]
        if shared:
            assert torch.allclose(per_view, per_view[:1].expand_as(per_view))
        else:
            assert (per_view[1:] - per_view[:1]).abs().max() > 1e-3
