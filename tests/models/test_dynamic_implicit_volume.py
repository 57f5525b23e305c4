"""dynamic-implicit-volume: at a fixed time it is a static implicit-volume (same API, renderer and exporter
unchanged); the deformation moves queries; the temporal regulariser vanishes for a static scene."""
from __future__ import annotations

import math
import os

import pytest
import torch

import threestudio
from threestudio.models.geometry.dynamic_implicit_volume import DynamicImplicitVolume
from threestudio.utils.config import ConfigError

GRID = {"otype": "HashGrid", "n_levels": 4, "n_features_per_level": 2, "log2_hashmap_size": 12,
        "base_resolution": 8, "per_level_scale": 2.0}
STATIC = {"radius": 1.0, "pos_encoding_config": GRID, "density_activation": "trunc_exp",
          "density_blob_scale": 10.0, "density_blob_std": 0.8}


def _pair(seed: int = 0):
    torch.manual_seed(seed)
    dynamic = threestudio.find("dynamic-implicit-volume")(dict(STATIC))
    static = threestudio.find("implicit-volume")(dict(STATIC))
    missing, unexpected = static.load_state_dict(dynamic.state_dict(), strict=False)
    assert not missing and all(k.startswith("deformation") for k in unexpected)
    return dynamic, static


def _randomise_deformation(geometry: DynamicImplicitVolume, seed: int = 1, scale: float = 0.3) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in [*geometry.deformation_pos_encoding.parameters(), *geometry.deformation_network.parameters()]:
            p.copy_(torch.randn(p.shape, generator=gen) * scale)


def _points(n: int = 500) -> torch.Tensor:
    return (torch.rand(n, 3, generator=torch.Generator().manual_seed(2)) - 0.5) * 1.4


def test_untrained_field_is_static_and_equals_implicit_volume():
    dynamic, static = _pair()
    pts = _points()
    ref = static(pts, output_normal=True)
    for t in (0.0, 0.4, 1.0):
        with dynamic.at_time(t):
            out = dynamic(pts, output_normal=True)
            assert set(out) == set(ref)
            for key in ref:
                torch.testing.assert_close(out[key], ref[key])
            torch.testing.assert_close(dynamic.forward_density(pts), static.forward_density(pts))
            torch.testing.assert_close(dynamic.export(pts)["features"], static.export(pts)["features"])


def test_field_at_time_is_the_static_field_at_deformed_points():
    dynamic, static = _pair()
    _randomise_deformation(dynamic)
    pts = _points()
    with dynamic.at_time(0.3):
        warped = pts + dynamic.deformation(pts)
        got = dynamic(pts)
    assert float((warped - pts).detach().abs().max()) > 0.05
    # canonical encoding at the warped point, density prior in world space
    enc = static._encode(warped)
    torch.testing.assert_close(got["density"], static._density_from_encoding(pts, enc))
    torch.testing.assert_close(got["features"], static.feature_network(enc))
    with dynamic.at_time(0.8):
        assert not torch.allclose(dynamic.forward_density(pts), got["density"])
    # a per-point time equal everywhere is the scalar time; the block restores the previous time
    with dynamic.at_time(0.5):
        with dynamic.at_time(torch.full((len(pts),), 0.3)):
            torch.testing.assert_close(dynamic.forward_density(pts), got["density"])
        assert dynamic.time == 0.5
    assert dynamic.time == dynamic.cfg.default_time


def test_trajectory_deformation_is_a_low_frequency_time_basis():
    dynamic, _ = _pair()
    _randomise_deformation(dynamic)
    pts = _points(50)
    x = (pts - dynamic.bbox[0]) / (dynamic.bbox[1] - dynamic.bbox[0])
    coefficients = dynamic.deformation_network(dynamic.deformation_pos_encoding(x)).view(50, 3, 6)
    s = dynamic.cfg.deformation_scale
    for t in (0.0, 0.25, 0.9):
        basis = torch.tensor([math.sin(math.pi * k * t) for k in (1, 2, 3)] + [math.cos(math.pi * k * t) for k in (1, 2, 3)])
        expected = s * torch.tanh((coefficients * basis).sum(-1) / s)
        torch.testing.assert_close(dynamic.deformation(pts, t), expected)
    assert float(dynamic.deformation(pts, 0.5).abs().max()) > 0.05
    # the point network sees no time: D at a time is the same whatever the other times asked
    both = dynamic.deformation(torch.cat([pts, pts]), torch.cat([torch.full((50,), 0.2), torch.full((50,), 0.7)]))
    torch.testing.assert_close(both[50:], dynamic.deformation(pts, 0.7))


def test_temporal_regulariser_is_zero_for_a_static_scene():
    dynamic, _ = _pair()
    pts = _points(200)
    assert float(dynamic.temporal_smoothness(pts)) == 0.0  # untrained: no deformation at all
    _randomise_deformation(dynamic)
    assert float(dynamic.temporal_smoothness(pts)) > 1e-3
    # the "mlp" deformation: one network on the point and the time
    torch.manual_seed(0)
    dynamic = threestudio.find("dynamic-implicit-volume")({**STATIC, "deformation_model": "mlp"})
    _randomise_deformation(dynamic)
    n_time = dynamic.deformation_time_encoding.n_output_dims
    first = dynamic.deformation_network.layers[0].weight
    assert float(dynamic.temporal_smoothness(pts)) > 1e-3  # a time-dependent deformation
    with torch.no_grad():
        first[:, -n_time:] = 0.0  # the deformation no longer depends on t: a static (deformed) scene
    assert float(dynamic.temporal_smoothness(pts)) == 0.0
    loss = dynamic.temporal_smoothness(pts)
    loss.backward()  # differentiable in the deformation parameters


def test_renderer_and_exporter_work_unchanged_at_a_fixed_time(tmp_path):
    torch.manual_seed(0)
    geometry = threestudio.find("dynamic-implicit-volume")(dict(STATIC))
    _randomise_deformation(geometry, scale=0.05)
    material = threestudio.find("no-material")({"color_activation": "sigmoid"})
    background = threestudio.find("solid-color-background")({"color": [1.0, 1.0, 1.0]})
    renderer = threestudio.find("nerf-volume-renderer")({"radius": 1.0, "num_samples_per_ray": 64}, geometry=geometry,
                                                        material=material, background=background)
    renderer.eval()
    renderer.estimator.fill(True)
    from threestudio.data.camera_sampling import orbit_cameras

    cams = orbit_cameras(1, 20.0, 2.0, 40.0, 8, 8)
    with geometry.at_time(0.5):
        out = renderer(cams["rays_o"], cams["rays_d"], cams["light_positions"])
    assert out["comp_rgb"].shape == (1, 8, 8, 3) and float(out["opacity"].max()) > 0.5
    exporter = threestudio.find("mesh-exporter")({"isosurface_resolution": 32, "texture_size": 64,
                                                 "decimate_target_faces": None}, geometry=geometry, material=material)
    with geometry.at_time(0.5):
        files = exporter(str(tmp_path / "t05"))
    assert {os.path.basename(f) for f in files} >= {"model.obj", "model.glb"}


def test_config_errors():
    with pytest.raises(ConfigError, match="normal_type 'analytic' is not supported"):
        threestudio.find("dynamic-implicit-volume")({**STATIC, "normal_type": "analytic"})
    geometry = threestudio.find("dynamic-implicit-volume")(dict(STATIC))
    with pytest.raises(ConfigError, match="deformation_model must be 'trajectory' or 'mlp'"):
        threestudio.find("dynamic-implicit-volume")({**STATIC, "deformation_model": "planes"})
    with pytest.raises(ConfigError, match="trajectory_frequencies must be at least 1"):
        threestudio.find("dynamic-implicit-volume")({**STATIC, "trajectory_frequencies": 0})
    with pytest.raises(ValueError, match="'random'"):
        with geometry.at_time("later"):
            pass
