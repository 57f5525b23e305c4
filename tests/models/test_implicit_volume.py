"""implicit-volume geometry: density bias, normals, isosurface, export, config errors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import threestudio
from threestudio.models.exporters.isosurface import ExportError
from threestudio.utils.base import build_module
from threestudio.utils.config import ConfigError

SMALL_GRID = {"otype": "HashGrid", "n_levels": 4, "n_features_per_level": 2, "log2_hashmap_size": 12,
              "base_resolution": 8, "per_level_scale": 1.5}


def make_geometry(**cfg):
    cfg.setdefault("pos_encoding_config", dict(SMALL_GRID))
    return build_module("implicit-volume", cfg, "system.geometry")


def zero_networks(geo) -> None:
    """Make the learned part vanish: the density is the blob bias alone (a radial field)."""
    with torch.no_grad():
        for p in geo.parameters():
            p.zero_()


def test_registered_and_outputs_shapes():
    assert threestudio.find("implicit-volume").__name__ == "ImplicitVolume"
    geo = make_geometry(n_feature_dims=5)
    pts = torch.rand(2, 7, 3) * 2 - 1
    out = geo(pts)
    assert out["density"].shape == (2, 7, 1) and out["features"].shape == (2, 7, 5)
    assert "normal" not in out
    assert geo.forward_density(pts).shape == (2, 7, 1)
    assert torch.allclose(geo.forward_density(pts), out["density"])
    assert geo.export(pts)["features"].shape == (2, 7, 5)
    assert "encoding.encoding.encoding.params" in geo.state_dict()
    assert "density_network.layers.0.weight" in geo.state_dict()


@pytest.mark.parametrize("bias, expected", [
    ("blob_magic3d", lambda r: F.softplus(torch.tensor(10.0 * (1 - r / 0.5)))),
    ("blob_dreamfusion", lambda r: F.softplus(torch.tensor(10.0 * math.exp(-0.5 * r * r / 0.25)))),
    (2.0, lambda r: F.softplus(torch.tensor(2.0))),
])
def test_density_bias(bias, expected):
    geo = make_geometry(density_bias=bias)
    zero_networks(geo)
    for r in (0.0, 0.3, 0.8):
        d = geo.forward_density(torch.tensor([[r, 0.0, 0.0]]))
        assert d.item() == pytest.approx(float(expected(r)), rel=1e-5)


def test_density_activations():
    for act, fn in (("exp", math.exp), ("trunc_exp", math.exp), ("relu", lambda v: max(v, 0.0))):
        geo = make_geometry(density_bias=0.5, density_activation=act)
        zero_networks(geo)
        assert geo.forward_density(torch.zeros(1, 3)).item() == pytest.approx(fn(0.5), rel=1e-6)


@pytest.mark.parametrize("normal_type", ["analytic", "finite_difference", "finite_difference_laplacian"])
def test_sphere_field_normals_point_outwards(normal_type):
    geo = make_geometry(normal_type=normal_type, finite_difference_normal_eps=1e-3)
    gen = torch.Generator().manual_seed(0)
    pts = torch.randn(500, 3, generator=gen)
    pts = pts / pts.norm(dim=-1, keepdim=True) * (0.1 + 0.7 * torch.rand(500, 1, generator=gen))
    radial = pts / pts.norm(dim=-1, keepdim=True)
    with torch.no_grad():
        normal = geo(pts, output_normal=True)["normal"]
    assert normal.shape == (500, 3)
    assert torch.allclose(normal.norm(dim=-1), torch.ones(500), atol=1e-4)
    # freshly initialised grid (|params| <= 1e-4): the blob dominates, normals are radial
    assert float((normal * radial).sum(-1).min()) > 0.95
    zero_networks(geo)
    with torch.no_grad():
        normal = geo(pts, output_normal=True)["normal"]
    assert float((normal * radial).sum(-1).min()) > 0.999


def test_analytic_normal_gradients_equal_across_backends():
    torch.manual_seed(0)
    geos = {b: make_geometry(normal_type="analytic",
                             pos_encoding_config={**SMALL_GRID, "backend": b}) for b in ("torch", "cpu_fused")}
    geos["cpu_fused"].load_state_dict(geos["torch"].state_dict())
    with torch.no_grad():
        geos["torch"].encoding.encoding.encoding.params.normal_(0, 0.5)
        geos["cpu_fused"].encoding.encoding.encoding.params.copy_(geos["torch"].encoding.encoding.encoding.params)
    pts = torch.rand(300, 3) - 0.5
    view = F.normalize(torch.randn(300, 3), dim=-1)
    grads = {}
    for name, geo in geos.items():
        out = geo(pts, output_normal=True)
        # an orientation-loss-like objective: depends on the normals, so it needs second derivatives
        loss = (F.relu((out["normal"] * view).sum(-1)) ** 2).sum() + (out["density"].sum() + out["features"].sum()) * 1e-3
        loss.backward()
        grads[name] = {k: p.grad.clone() for k, p in geo.named_parameters()}
    for key, ref in grads["torch"].items():
        assert torch.allclose(grads["cpu_fused"][key], ref, rtol=1e-4, atol=1e-5 * max(float(ref.abs().max()), 1e-3)), key


def test_normals_without_grad_mode_are_detached():
    geo = make_geometry(normal_type="analytic")
    with torch.no_grad():
        out = geo(torch.rand(4, 3), output_normal=True)
    assert not out["normal"].requires_grad and not out["density"].requires_grad


def test_density_grid_and_isosurface_of_a_ball():
    geo = make_geometry(isosurface_threshold=5.0, isosurface_resolution=48)
    zero_networks(geo)
    grid = geo.density_grid(resolution=5)
    assert grid.shape == (5, 5, 5)
    # index (i, j, k) -> bbox[0] + (i, j, k) / 4 * 2: the centre vertex is the origin
    assert grid[2, 2, 2].item() == pytest.approx(float(F.softplus(torch.tensor(10.0))), rel=1e-5)
    assert grid[0, 2, 2].item() == pytest.approx(grid[2, 2, 0].item())
    mesh = geo.isosurface()
    # softplus(10 (1 - r / 0.5)) = 5 at r = (1 - ln(e^5 - 1) / 10) / 2
    r_expected = (1 - math.log(math.exp(5) - 1) / 10) / 2
    radii = mesh.vertices.norm(dim=-1)
    assert float((radii - r_expected).abs().max()) < 0.01
    centres = mesh.vertices[mesh.faces].mean(dim=1)
    outward = (mesh.face_normals() * F.normalize(centres, dim=-1)).sum(-1)
    assert float(outward.min()) > 0.5
    assert mesh.extras["threshold"] == 5.0


def test_geometry_and_exporter_share_one_extraction_path(tmp_path):
    # "auto" means the same (Otsu) level in both, and the two meshes are the same mesh
    from threestudio.models.exporters.isosurface import otsu_threshold

    geo = make_geometry(isosurface_threshold="auto", isosurface_resolution=24)
    zero_networks(geo)
    mesh = geo.isosurface()
    grid = geo.density_grid(resolution=24)
    assert mesh.extras["threshold"] == pytest.approx(otsu_threshold(grid.numpy()))
    exporter = build_module("mesh-exporter", {"isosurface_resolution": 24, "fill_cavities": False,
                                              "remove_floaters": False, "decimate_target_faces": None,
                                              "repair_manifold": False},
                            "system.exporter", geometry=geo, material=None)
    vertices, faces = exporter.extract_mesh()
    np.testing.assert_array_equal(vertices, mesh.vertices.numpy())
    np.testing.assert_array_equal(faces, mesh.faces.numpy())


def test_isosurface_coarse_to_fine_and_outlier_removal():
    geo = make_geometry(isosurface_threshold=5.0, isosurface_resolution=24, isosurface_coarse_to_fine=True,
                        isosurface_remove_outliers=True)
    zero_networks(geo)
    mesh = geo.isosurface()
    assert float(mesh.vertices.abs().max()) < 0.3
    empty = make_geometry(isosurface_threshold=50.0, isosurface_resolution=16)
    zero_networks(empty)
    with pytest.raises(ExportError, match="Empty isosurface.*never crosses isosurface_threshold=50"):
        empty.isosurface()


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="system.geometry.normal_type"):
        make_geometry(normal_type="magic")
    with pytest.raises(ConfigError, match="system.geometry.density_bias"):
        make_geometry(density_bias="blob_big")
    with pytest.raises(ConfigError, match="system.geometry"):
        make_geometry(no_such_key=1)
    with pytest.raises(ConfigError, match="isosurface_threshold"):
        make_geometry(isosurface_threshold="median")
    geo = make_geometry(normal_type=None)
    with pytest.raises(ValueError, match="normal_type"):
        geo(torch.rand(2, 3), output_normal=True)


@pytest.mark.parametrize("backend", ["cpu_fused", "torch"])
def test_analytic_normals_equal_plain_autograd(backend):
    # the geometry assembles d density / d points from parts; check it against one autograd.grad
    torch.manual_seed(1)
    geo = make_geometry(normal_type="analytic", density_activation="trunc_exp",
                        pos_encoding_config={**SMALL_GRID, "backend": backend, "include_xyz": True})
    with torch.no_grad():
        geo.encoding.encoding.encoding.params.normal_(0, 0.3)
    pts = torch.rand(200, 3) * 1.6 - 0.8
    view = F.normalize(torch.randn(200, 3), dim=-1)

    def orient(normal):
        return (F.relu((normal * view).sum(-1)) ** 2).sum()

    out = geo(pts, output_normal=True)
    orient(out["normal"]).backward()
    fast = {k: p.grad.clone() for k, p in geo.named_parameters() if p.grad is not None}
    geo.zero_grad(set_to_none=True)
    p = pts.clone().requires_grad_(True)
    density = geo.forward_density(p)
    normal = F.normalize(-torch.autograd.grad(density, p, torch.ones_like(density), create_graph=True)[0], dim=-1)
    assert torch.allclose(out["normal"], normal, atol=1e-5)
    orient(normal).backward()
    for key, ref in ((k, q.grad) for k, q in geo.named_parameters() if q.grad is not None):
        assert torch.allclose(fast[key], ref, rtol=1e-4, atol=1e-6 * max(float(ref.abs().max()), 1.0)), key
