"""Materials: no-material, diffuse-with-point-light-material, neural-radiance-material."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from threestudio.utils.base import build_module
from threestudio.utils.config import ConfigError


def test_no_material_activates_features_and_exports_albedo():
    mat = build_module("no-material", {}, "system.material")
    assert not mat.requires_normal
    feats = torch.tensor([[0.0, 2.0, -2.0]])
    assert torch.allclose(mat(feats), torch.sigmoid(feats))
    assert torch.allclose(mat.export(feats)["albedo"], torch.sigmoid(feats))
    with pytest.raises(ValueError, match="feature channels"):
        mat(torch.zeros(2, 5))
    net = build_module("no-material", {"input_feature_dims": 5, "color_activation": "none",
                                       "mlp_network_config": {"otype": "VanillaMLP", "n_neurons": 8,
                                                              "n_hidden_layers": 1}}, "system.material")
    assert net(torch.zeros(4, 6, 5)).shape == (4, 6, 3)
    with pytest.raises(ConfigError, match="system.material.color_activation"):
        build_module("no-material", {"color_activation": "glow"}, "system.material")


def _diffuse_inputs():
    feats = torch.tensor([[0.0, 0.0, 0.0], [1.0, -1.0, 2.0]])
    positions = torch.zeros(2, 3)
    normals = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    lights = torch.tensor([[0.0, 0.0, 5.0], [5.0, 0.0, 5.0]])  # 0 and 45 degrees from the normal
    return feats, positions, normals, lights


def test_diffuse_shading_modes_follow_lambert():
    mat = build_module("diffuse-with-point-light-material",
                       {"ambient_light_color": [0.1, 0.2, 0.3], "diffuse_light_color": [0.5, 0.5, 0.5]},
                       "system.material")
    assert mat.requires_normal
    feats, pos, n, lights = _diffuse_inputs()
    albedo = torch.sigmoid(feats)
    cos = torch.tensor([[1.0], [2 ** -0.5]])
    light = cos * 0.5 + torch.tensor([0.1, 0.2, 0.3])
    call = dict(features=feats, positions=pos, shading_normal=n, light_positions=lights)
    assert torch.allclose(mat(**call, shading="albedo"), albedo)
    assert torch.allclose(mat(**call, shading="textureless"), light, atol=1e-6)
    assert torch.allclose(mat(**call, shading="diffuse"), albedo * light, atol=1e-6)
    ratio = mat(**call, shading="diffuse", ambient_ratio=0.25)
    assert torch.allclose(ratio, albedo * (cos * 0.75 + 0.25), atol=1e-6)
    # a light behind the surface contributes nothing
    back = mat(features=feats, positions=pos, shading_normal=-n, light_positions=lights, shading="textureless")
    assert torch.allclose(back, torch.tensor([0.1, 0.2, 0.3]).expand(2, 3))
    with pytest.raises(ValueError, match="Unknown shading"):
        mat(**call, shading="phong")
    assert torch.allclose(mat.export(feats)["albedo"], albedo)


def test_diffuse_ambient_only_steps_and_random_shading():
    mat = build_module("diffuse-with-point-light-material",
                       {"ambient_only_steps": 100, "diffuse_prob": 1.0, "textureless_prob": 0.0}, "system.material")
    feats, pos, n, lights = _diffuse_inputs()
    call = dict(features=feats, positions=pos, shading_normal=n, light_positions=lights)
    mat.train()
    mat.do_update_step(0, 50)
    assert torch.allclose(mat(**call), torch.sigmoid(feats))  # ambient only: albedo
    mat.do_update_step(0, 100)
    assert torch.allclose(mat(**call), mat(**call, shading="diffuse"))
    mat.eval()
    assert torch.allclose(mat(**call), mat(**call, shading="diffuse"))
    # textureless_prob = 1 after the ambient phase: shading only
    tl = build_module("diffuse-with-point-light-material",
                      {"ambient_only_steps": 0, "diffuse_prob": 1.0, "textureless_prob": 1.0}, "system.material")
    tl.train()
    tl.do_update_step(0, 10)
    assert torch.allclose(tl(**call), tl(**call, shading="textureless"))
    # soft shading draws a random ambient/diffuse split per call
    soft = build_module("diffuse-with-point-light-material",
                        {"ambient_only_steps": 0, "diffuse_prob": 1.0, "textureless_prob": 1.0, "soft_shading": True},
                        "system.material")
    soft.train()
    torch.manual_seed(0)
    outs = torch.stack([soft(**call) for _ in range(5)])
    assert float(outs.std(dim=0).max()) > 1e-3


def test_neural_radiance_material_is_view_dependent():
    torch.manual_seed(0)
    mat = build_module("neural-radiance-material", {"input_feature_dims": 4}, "system.material")
    feats = torch.randn(6, 4)
    up = torch.tensor([0.0, 0.0, 1.0]).expand(6, 3)
    side = torch.tensor([1.0, 0.0, 0.0]).expand(6, 3)
    c_up, c_side = mat(feats, viewdirs=up), mat(feats, viewdirs=side)
    assert c_up.shape == (6, 3) and float(c_up.detach().min()) >= 0 and float(c_up.detach().max()) <= 1
    assert not torch.allclose(c_up, c_side)
    assert torch.allclose(mat(feats.view(2, 3, 4), viewdirs=up.reshape(2, 3, 3)).view(6, 3), c_up)
    albedo = mat.export(feats)["albedo"]
    assert albedo.shape == (6, 3)
    with pytest.raises(ValueError, match="input_feature_dims"):
        mat(torch.zeros(2, 3), viewdirs=F.normalize(torch.ones(2, 3), dim=-1))
