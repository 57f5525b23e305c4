"""DMTet: marching tetrahedra (watertight, right volume, differentiable), the tetrahedra-sdf-grid geometry,
its conversion from a NeRF, the nvdiff-rasterizer renderer on it, and the mesh regularisers."""
from __future__ import annotations

import math

import pytest
import torch
import trimesh

import threestudio
from threestudio.data.camera_sampling import orbit_cameras
from threestudio.models.geometry.marching_tetrahedra import (
    KUHN_TETS,
    lattice_vertices,
    marching_tetrahedra,
    surface_tetrahedra,
)
from threestudio.utils.base import build_module
from threestudio.utils.losses import laplacian_smoothness, normal_consistency

SMALL_GRID = {"otype": "HashGrid", "n_levels": 4, "n_features_per_level": 2, "log2_hashmap_size": 12,
              "base_resolution": 4, "per_level_scale": 2.0}
BOX = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])


def extract(sdf_fn, resolution: int = 32):
    x = lattice_vertices(resolution, BOX)
    sdf = sdf_fn(x)
    v, f = marching_tetrahedra(x, sdf, surface_tetrahedra(sdf, resolution))
    return v, f


def test_kuhn_tetrahedra_fill_the_cube_positively_oriented():
    corners = torch.tensor([[(c >> d) & 1 for d in range(3)] for c in range(8)], dtype=torch.float64)
    p = corners[KUHN_TETS]
    det = torch.linalg.det(p[:, 1:] - p[:, :1])
    assert (det > 0).all() and float(det.sum() / 6) == pytest.approx(1.0)  # six tets of volume 1/6


def test_cube_mesh_is_watertight_with_the_right_volume():
    v, f = extract(lambda x: (x.abs() - 0.45).max(dim=-1).values)
    mesh = trimesh.Trimesh(v.numpy(), f.numpy(), process=False)
    assert mesh.is_watertight and mesh.is_winding_consistent
    assert mesh.volume == pytest.approx(0.9 ** 3, rel=0.01)  # positive: normals point outwards
    sphere_v, sphere_f = extract(lambda x: x.norm(dim=-1) - 0.6)
    sphere = trimesh.Trimesh(sphere_v.numpy(), sphere_f.numpy(), process=False)
    assert sphere.is_watertight and sphere.volume == pytest.approx(4 / 3 * math.pi * 0.6 ** 3, rel=0.02)


def test_marching_tetrahedra_is_differentiable_in_sdf_and_positions():
    x = lattice_vertices(8, BOX).requires_grad_(True)
    sdf = (x.detach().norm(dim=-1) - 0.5).requires_grad_(True)
    v, f = marching_tetrahedra(x, sdf, surface_tetrahedra(sdf, 8))
    # growing the sphere (lowering the SDF everywhere) moves every surface vertex outwards
    (v * v.detach()).sum().backward()
    assert sdf.grad is not None and float(sdf.grad.sum()) < 0
    assert x.grad is not None and x.grad.abs().sum() > 0


def make_grid(**overrides):
    cfg = {"isosurface_resolution": 24, "pos_encoding_config": SMALL_GRID, **overrides}
    return build_module("tetrahedra-sdf-grid", cfg, "system.geometry")


def test_geometry_shape_init_features_and_errors():
    g = make_grid(shape_init="sphere:0.4")
    mesh = g.isosurface()
    r = mesh.vertices.norm(dim=-1)
    assert (r - 0.4).abs().max() < 2 / 24  # within one lattice cell
    assert g(torch.zeros(5, 3))["features"].shape == (5, 3)
    assert set(g.state_dict()) >= {"sdf", "deformation", "isosurface_bbox"}
    assert not any("tets" in k for k in g.state_dict())  # the lattice is regenerated, never stored
    with pytest.raises(threestudio.utils.config.ConfigError, match="shape_init"):
        make_grid(shape_init="cube:1")
    with pytest.raises(threestudio.utils.config.ConfigError, match="deformation_scale"):
        make_grid(deformation_scale=0.9)
    empty = make_grid(shape_init=None)
    with pytest.raises(RuntimeError, match="no zero crossing"):
        empty.isosurface()


def test_deformation_moves_vertices_within_half_a_cell():
    g = make_grid(shape_init="sphere:0.4")
    with torch.no_grad():
        g.deformation.fill_(100.0)
    moved = g.deformed_vertices() - g.grid_vertices()
    torch.testing.assert_close(moved, torch.full_like(moved, 0.5 * 2 / 24))


def nerf_with_known_surface():
    """An implicit-volume whose density is the magic3d blob only (zeroed MLP): softplus(10 (1 - r / 0.8)),
    i.e. its isosurface at level t is the sphere r = 0.8 (1 - softplus^-1(t) / 10)."""
    nerf = build_module("implicit-volume", {"pos_encoding_config": SMALL_GRID, "density_activation": "softplus",
                                            "density_blob_scale": 10.0, "density_blob_std": 0.8,
                                            "isosurface_threshold": 5.0, "isosurface_resolution": 48},
                        "coarse")
    with torch.no_grad():
        for p in nerf.density_network.parameters():
            p.zero_()
    radius = 0.8 * (1 - math.log(math.expm1(5.0)) / 10)
    return nerf, radius


def test_nerf_to_dmtet_conversion_keeps_the_surface_within_one_cell():
    nerf, radius = nerf_with_known_surface()
    cls = threestudio.find("tetrahedra-sdf-grid")
    dmtet = cls.create_from(nerf, {"isosurface_resolution": 32, "pos_encoding_config": SMALL_GRID}, copy_net=True)
    box = dmtet.isosurface_bbox
    assert (box[0] > -0.6).all() and (box[1] < 0.6).all()  # the lattice hugs the coarse surface
    cell = float(dmtet.cell_size().max())
    mesh = dmtet.isosurface()
    r = mesh.vertices.norm(dim=-1)
    assert float((r.detach() - radius).abs().max()) < cell
    # inherited texture: the same features as the NeRF at any point
    pts = torch.rand(10, 3) - 0.5
    torch.testing.assert_close(dmtet(pts)["features"], nerf(pts)["features"])
    # without copy_net the texture is freshly initialised
    fresh = cls.create_from(nerf, {"isosurface_resolution": 16, "pos_encoding_config": SMALL_GRID}, copy_net=False)
    assert not torch.allclose(fresh(pts)["features"], nerf(pts)["features"])


def test_renderer_outputs_and_gradients_on_the_mesh():
    g = make_grid(shape_init="sphere:0.5")
    material = build_module("no-material", {}, "m")
    background = build_module("solid-color-background", {"color": [0.0, 0.0, 1.0]}, "b")
    renderer = build_module("nvdiff-rasterizer", {"context_type": "cpu"}, "r", geometry=g, material=material,
                            background=background)
    batch = orbit_cameras(2, 20.0, 2.5, 40.0, 48, 40)
    out = renderer(**batch)
    for key, channels in (("comp_rgb", 3), ("opacity", 1), ("depth", 1), ("comp_normal", 3)):
        assert out[key].shape == (2, 48, 40, channels), key
    covered = out["rast"][..., 3] > 0
    # the sphere of radius 0.5 seen from 2.5: depth 2.0 at the centre pixel, normals facing the camera
    assert float(out["depth"][0, 24, 20, 0].detach()) == pytest.approx(2.0, abs=0.03)
    to_camera = torch.nn.functional.normalize(batch["camera_positions"][:, None, None] - 0, dim=-1)
    facing = (out["comp_normal"] * to_camera).sum(-1)[covered]
    assert (facing > 0).float().mean() > 0.95
    # the disk covers about pi r'^2 of the frame; background pixels are the background's blue
    assert not covered[:, 0, 0].any() and torch.allclose(out["comp_rgb"][:, 0, 0], torch.tensor([0.0, 0.0, 1.0]))
    (out["comp_rgb"].sum() + out["opacity"].sum()).backward()
    assert g.sdf.grad.abs().sum() > 0 and g.deformation.grad.abs().sum() > 0
    assert g.encoding.encoding.encoding.params.grad.abs().sum() > 0 if hasattr(g.encoding, "encoding") else True


def test_supersampled_render_is_the_average_of_the_finer_render():
    g = make_grid(shape_init="sphere:0.5")
    material = build_module("no-material", {}, "m")
    background = build_module("solid-color-background", {"color": [0.0, 0.0, 1.0]}, "b")

    def renderer(**cfg):
        return build_module("nvdiff-rasterizer", {"context_type": "cpu", **cfg}, "system.renderer", geometry=g,
                            material=material, background=background)

    coarse = renderer(supersample=2)(**orbit_cameras(2, 20.0, 2.5, 40.0, 24, 20))
    fine = renderer()(**orbit_cameras(2, 20.0, 2.5, 40.0, 48, 40))
    for key in ("comp_rgb", "opacity", "depth"):
        pooled = torch.nn.functional.avg_pool2d(fine[key].permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)
        assert coarse[key].shape == (2, 24, 20, pooled.shape[-1])
        torch.testing.assert_close(coarse[key], pooled, rtol=1e-5, atol=1e-5)
    # partly covered outline pixels blend the sphere and the blue background
    edge = (coarse["opacity"] > 0.2) & (coarse["opacity"] < 0.8)
    assert edge.any()
    with pytest.raises(threestudio.utils.config.ConfigError, match="system.renderer.supersample"):
        renderer(supersample=0)
    # train_jitter: a random sub-pixel shift of the samples in training only
    jittered = renderer(supersample=2, train_jitter=True)
    batch = orbit_cameras(2, 20.0, 2.5, 40.0, 24, 20)
    jittered.eval()
    torch.testing.assert_close(jittered(**batch)["opacity"], coarse["opacity"])
    jittered.train()
    first, second = jittered(**batch)["opacity"], jittered(**batch)["opacity"]
    assert not torch.allclose(first, second) and not torch.allclose(first, coarse["opacity"])
    # a shift of at most half a fine pixel moves the outline, not the object: coverage nearly unchanged
    assert float((first.sum() - coarse["opacity"].sum()).abs()) < 0.05 * float(coarse["opacity"].sum())


def test_conversion_free_level_must_be_below_the_threshold():
    nerf, _ = nerf_with_known_surface()
    cls = threestudio.find("tetrahedra-sdf-grid")
    with pytest.raises(threestudio.utils.config.ConfigError, match="convert_free_level"):
        cls.create_from(nerf, {"isosurface_resolution": 16, "pos_encoding_config": SMALL_GRID,
                               "convert_free_level": 5.0}, config_path="system.geometry")


def test_mesh_regularisers():
    v, f = extract(lambda x: x.norm(dim=-1) - 0.6, 16)
    smooth_nc, smooth_lap = float(normal_consistency(v, f)), float(laplacian_smoothness(v, f))
    noisy = v + torch.randn(v.shape, generator=torch.Generator().manual_seed(0)) * 0.02
    assert float(normal_consistency(noisy, f)) > 2 * smooth_nc
    assert float(laplacian_smoothness(noisy, f)) > 2 * smooth_lap
    flat = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]])
    faces = torch.tensor([[0, 1, 2], [2, 1, 3]])
    assert float(normal_consistency(flat, faces)) == pytest.approx(0.0, abs=1e-6)
    bent = flat.clone()
    bent[3, 2] = 1.0  # the second triangle tilts by 45 degrees about the shared edge... (1 - cos)
    n2 = torch.nn.functional.normalize(torch.cross(bent[1] - bent[2], bent[3] - bent[2], dim=0), dim=0)
    assert float(normal_consistency(bent, faces)) == pytest.approx(1 - float(n2[2]), abs=1e-6)


def hinge(angle_deg: float) -> torch.Tensor:
    """The free vertex (a leaf tensor) of `hinge_mesh` whose two triangles' normals differ by `angle_deg`."""
    a = math.radians(angle_deg)
    return torch.tensor([math.cos(a), 0.0, math.sin(a)], requires_grad=True)


def hinge_mesh(free: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two triangles on the edge (0,0,0)-(0,1,0): one in the plane z = 0 (normal +z), one through `free`."""
    vertices = torch.cat([torch.tensor([[0.0, 0, 0], [0, 1, 0], [-1, 0, 0]]), free[None]])
    return vertices, torch.tensor([[0, 1, 2], [1, 0, 3]])


def test_robust_normal_consistency_flattens_small_bends_and_leaves_creases():
    """With crease_deg the term is x / (x + s), x = 1 - cos(bend), s = 1 - cos(crease): equal to that reference
    at any bend; steeper than the plain term at a small bend, nearly flat at a right angle."""
    s = 1 - math.cos(math.radians(20.0))
    for angle in (5.0, 20.0, 90.0):
        vertices, faces = hinge_mesh(hinge(angle).detach())
        x = 1 - math.cos(math.radians(angle))
        assert float(normal_consistency(vertices, faces)) == pytest.approx(x, abs=1e-6)
        assert float(normal_consistency(vertices, faces, crease_deg=20.0)) == pytest.approx(x / (x + s), abs=1e-6)

    def pull(angle: float, crease) -> float:
        free = hinge(angle)
        normal_consistency(*hinge_mesh(free), crease_deg=crease).backward()
        return float(free.grad.norm())

    assert pull(5.0, 20.0) > 10 * pull(5.0, None)  # noise: pulled flat much harder
    assert pull(90.0, 20.0) < 0.1 * pull(90.0, None)  # an edge: nearly left alone
    assert pull(90.0, 20.0) < 0.05 * pull(5.0, 20.0)


def test_loss_options_are_checked():
    import threestudio

    system = {"geometry_type": "tetrahedra-sdf-grid", "geometry": {"isosurface_resolution": 8, "geometry_only": True}}
    cls = threestudio.find("multiview-reconstruction-system")
    with pytest.raises(threestudio.utils.config.ConfigError, match=r"system.loss.normal_consistency_crease_deg must be an "
                       r"angle in \(0, 180\) degrees or null, got 200"):
        cls({**system, "loss": {"lambda_normal_consistency": 0.01, "normal_consistency_crease_deg": 200}})
    with pytest.raises(threestudio.utils.config.ConfigError, match="loss weights are named lambda_<term>.*"
                       "normal_consistency_crease_deg"):
        cls({**system, "loss": {"normal_consistency": 0.01}})


def test_laplacian_smoothness_is_the_uniform_laplacian_of_a_closed_mesh():
    # an octahedron: every vertex has 4 neighbours; move the top one up by 0.5
    v = torch.tensor([[1.0, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1.5], [0, 0, -1]])
    f = torch.tensor([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]])
    assert trimesh.Trimesh(v.numpy(), f.numpy()).is_watertight
    expected = []
    for i in range(6):
        neighbours = sorted({int(j) for face in f.tolist() if i in face for j in face if j != i})
        expected.append(((v[neighbours].mean(0) - v[i]) ** 2).sum())
    assert float(laplacian_smoothness(v, f)) == pytest.approx(float(torch.stack(expected).mean()), rel=1e-6)



class FoggyHollowBall(torch.nn.Module):
    """A coarse density field: a shell (0.3 < r < 0.6, density 100) whose hollow reaches the outside through a
    foggy channel (density 15, below the threshold 25): a NeRF's unseen interior behind a grazing-angle hole."""

    def __init__(self) -> None:
        super().__init__()
        from types import SimpleNamespace

        self.cfg = SimpleNamespace(isosurface_threshold=25.0, isosurface_resolution=48)
        self.register_buffer("bbox", BOX.clone())

    def forward_field(self, points: torch.Tensor):
        r = points.norm(dim=-1)
        density = torch.where((r > 0.3) & (r < 0.6), 100.0, 0.0)
        channel = (points[..., 1:].norm(dim=-1) < 0.12) & (points[..., 0] > 0) & (r < 0.6)
        return torch.where(channel, 15.0, density)[..., None], None

    def forward_level(self, field: torch.Tensor, threshold: float) -> torch.Tensor:
        return -(field - threshold)


@pytest.mark.parametrize("free_level", [None, 5.0])
def test_conversion_fills_the_pocket_behind_fog_with_a_free_level(free_level):
    cls = threestudio.find("tetrahedra-sdf-grid")
    dmtet = cls.create_from(FoggyHollowBall(), {"isosurface_resolution": 32, "convert_free_level": free_level,
                                                "geometry_only": True}, copy_net=False)
    radius = dmtet.isosurface().vertices.detach().norm(dim=-1)
    if free_level is None:
        assert float(radius.min()) < 0.35  # the hollow's wall became an inner surface
    else:
        assert float(radius.min()) > 0.6 - 2 * float(dmtet.cell_size().max())  # one solid ball
