"""The loss terms of threestudio.utils.losses: formulas, empty inputs, precision, config errors."""
from __future__ import annotations

import math

import pytest
import torch

from threestudio.models.renderers.volume_rendering import exclusive_optical_depth
from threestudio.utils import losses as L
from threestudio.utils.config import ConfigError


def packed_samples(counts, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    ray_indices = torch.cat([torch.full((c,), i) for i, c in enumerate(counts)]).long()
    t = torch.cat([torch.sort(torch.rand(c, generator=gen, dtype=torch.float64))[0] for c in counts])
    delta = torch.rand(len(t), generator=gen, dtype=torch.float64) * 0.1
    w = torch.rand(len(t), generator=gen, dtype=torch.float64)
    return w.to(dtype), t.to(dtype), delta.to(dtype), ray_indices


def brute_force_distortion(w, t, delta, ray_indices, n_rays):
    total = 0.0
    for i in range(n_rays):
        sel = ray_indices == i
        wi, ti, di = w[sel].double(), t[sel].double(), delta[sel].double()
        total += float((wi[:, None] * wi[None] * (ti[:, None] - ti[None]).abs()).sum() + (wi ** 2 * di).sum() / 3)
    return total / n_rays


def test_distortion_matches_brute_force():
    counts = [3, 0, 5, 1]
    w, t, delta, idx = packed_samples(counts)
    got = L.distortion_loss(w[:, None], t[:, None], delta[:, None], idx, len(counts))
    assert got.dtype == torch.float32
    assert math.isclose(float(got), brute_force_distortion(w, t, delta, idx, len(counts)), rel_tol=1e-6)


def test_distortion_keeps_float32_accuracy_on_many_samples():
    # 4096 rays x 96 samples: a float32 running sum over ~400k samples loses the per-ray sums
    counts = [96] * 4096
    w, t, delta, idx = packed_samples(counts, seed=1)
    w, t = w * 0.02, t * 4.0
    expected = L.distortion_loss(w, t, delta, idx, len(counts))  # float64 inputs: the reference
    got = L.distortion_loss(w.float(), t.float(), delta.float(), idx, len(counts))
    assert float(got) == pytest.approx(float(expected), rel=1e-6)  # the float32 sums were 2e-5 off


def test_optical_depth_uses_the_same_segment_sum():
    w, _, _, idx = packed_samples([4, 0, 3])
    depth = exclusive_optical_depth(w, idx, 3)
    w = w.tolist()
    assert depth.tolist() == pytest.approx([0, w[0], w[0] + w[1], w[0] + w[1] + w[2], 0, w[4], w[4] + w[5]])


def test_terms_equal_their_formulas():
    gen = torch.Generator().manual_seed(0)
    opacity = torch.rand(2, 3, 3, 1, generator=gen)
    opacity[0, 0, 0] = 0.0
    normal = torch.nn.functional.normalize(torch.randn(10, 3, generator=gen), dim=-1)
    dirs = torch.nn.functional.normalize(torch.randn(10, 3, generator=gen), dim=-1)
    weights = torch.rand(10, 1, generator=gen)
    z_var = torch.rand(2, 3, 3, 1, generator=gen)
    comp_normal = torch.randn(2, 3, 3, 3, generator=gen)

    facing = torch.clamp((normal * dirs).sum(-1), min=0)
    torch.testing.assert_close(L.orient_loss(weights, normal, dirs, opacity), (weights[:, 0] * facing ** 2).sum() / 17)
    torch.testing.assert_close(L.sparsity_loss(opacity), torch.sqrt(opacity ** 2 + 0.01).mean())
    p = opacity.clamp(1e-3, 1 - 1e-3)
    torch.testing.assert_close(L.opaque_loss(opacity), -(p * p.log() + (1 - p) * (1 - p).log()).mean())
    torch.testing.assert_close(L.z_variance_loss(z_var, opacity), z_var[opacity > 0.5].mean())
    mask = (torch.rand(2, 3, 3, 1, generator=gen) > 0.5).float()
    torch.testing.assert_close(L.mask_bce_loss(opacity, mask),
                               -(mask * p.log() + (1 - mask) * (1 - p).log()).mean())
    n = comp_normal
    torch.testing.assert_close(L.normal_smooth_2d_loss(n), ((n[:, 1:] - n[:, :-1]) ** 2).mean()
                               + ((n[:, :, 1:] - n[:, :, :-1]) ** 2).mean())
    perturbed = torch.nn.functional.normalize(normal + 0.1, dim=-1)
    torch.testing.assert_close(L.normal_smooth_3d_loss(normal, perturbed), (normal - perturbed).abs().mean())


def test_photometric_kinds_and_weighting():
    pred, target = torch.full((1, 2, 2, 3), 0.5), torch.zeros(1, 2, 2, 3)
    assert L.photometric_loss(pred, target, "mse").item() == pytest.approx(0.25)
    assert L.photometric_loss(pred, target, "l1").item() == pytest.approx(0.5)
    assert L.photometric_loss(pred, target, "smooth_l1").item() == pytest.approx(0.5 - 0.05)
    weight = torch.zeros(1, 2, 2, 1)
    weight[0, 0, 0] = 1.0
    pred[0, 0, 0] = 1.0
    assert L.photometric_loss(pred, target, "l1", weight).item() == pytest.approx(1.0)
    assert L.photometric_loss(pred, target, "l1", weight * 0).item() == 0.0
    with pytest.raises(ValueError, match="mse"):
        L.photometric_loss(pred, target, "l2")


def test_psnr():
    a = torch.zeros(4, 4, 3)
    assert math.isclose(L.psnr(a + 0.1, a), 20.0, rel_tol=1e-5)


def empty_render(requires_grad=True):
    """What the renderer gives when no ray hits anything: no samples, zero opacity."""
    def leaf(*shape):
        return torch.zeros(*shape, requires_grad=requires_grad)
    return {
        "opacity": leaf(2, 4, 4, 1), "z_variance": leaf(2, 4, 4, 1), "comp_normal": leaf(2, 4, 4, 3),
        "weights": leaf(0, 1), "t_points": leaf(0, 1), "t_intervals": leaf(0, 1), "t_dirs": leaf(0, 3),
        "normal": leaf(0, 3), "normal_perturb": leaf(0, 3), "ray_indices": torch.zeros(0, dtype=torch.long),
    }


def test_every_regularizer_is_finite_with_finite_gradients_when_no_ray_hits():
    from types import SimpleNamespace

    out = empty_render()
    # the mesh terms see an empty mesh (a DMTet surface that vanished): no vertices, no faces
    out["mesh"] = SimpleNamespace(vertices=torch.zeros(0, 3, requires_grad=True),
                                  faces=torch.zeros(0, 3, dtype=torch.long))
    losses = L.regularizer_losses(out, lambda name: True)
    assert set(losses) == set(L.REGULARIZERS)
    for name, value in losses.items():
        assert torch.isfinite(value), name
    total = sum(losses.values())
    total.backward()
    for key, tensor in out.items():
        if torch.is_tensor(tensor) and tensor.grad is not None:
            assert torch.isfinite(tensor.grad).all(), key
    # a render that hits nothing but still has samples (all weights zero): orient has no hit ray
    out = empty_render(requires_grad=False)
    out.update(weights=torch.zeros(5, 1), normal=torch.ones(5, 3), t_dirs=torch.ones(5, 3))
    assert L.orient_loss(out["weights"], out["normal"], out["t_dirs"], out["opacity"]).item() == 0.0


def test_only_the_active_terms_are_computed_and_missing_outputs_name_the_key():
    out = empty_render(requires_grad=False)
    assert L.regularizer_losses(out, lambda name: False) == {}
    assert set(L.regularizer_losses(out, lambda name: name == "sparsity")) == {"sparsity"}
    with pytest.raises(ConfigError, match="lambda_orient.*'normal'.*normal_type"):
        L.regularizer_losses({"opacity": out["opacity"]}, lambda name: name == "orient")
    with pytest.raises(ConfigError, match="lambda_normal_smooth.*return_comp_normal"):
        L.regularizer_losses({"opacity": out["opacity"]}, lambda name: name == "normal_smooth")


def test_regularizers_take_their_settings_from_system_loss():
    """normal_consistency_crease_deg (a system.loss key next to the weights) reaches the mesh term."""
    from types import SimpleNamespace

    vertices = torch.tensor([[0.0, 0, 0], [0, 1, 0], [-1, 0, 0], [0.5, 0, 0.5]])
    out = {"mesh": SimpleNamespace(vertices=vertices, faces=torch.tensor([[0, 1, 2], [1, 0, 3]]))}
    active = lambda name: name == "normal_consistency"  # noqa: E731
    bend = 1 - math.cos(math.radians(45))
    plain = L.regularizer_losses(out, active)["normal_consistency"]
    robust = L.regularizer_losses(out, active, {"normal_consistency_crease_deg": 20.0})["normal_consistency"]
    assert float(plain) == pytest.approx(bend, abs=1e-6)
    assert float(robust) == pytest.approx(bend / (bend + 1 - math.cos(math.radians(20))), abs=1e-6)
