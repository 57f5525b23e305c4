"""nerf-volume-renderer + occupancy grid: closed-form volume rendering, empty-space skipping, outputs."""
from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from threestudio.models.geometry.base import BaseImplicitGeometry
from threestudio.models.renderers.occupancy_grid import OccupancyGridEstimator
from threestudio.models.renderers.volume_rendering import (
    accumulate_along_rays,
    ray_aabb_intersect,
    render_visibility_from_density,
    render_weight_from_density,
)
from threestudio.utils.base import build_module
from threestudio.utils.config import ConfigError
from threestudio.utils.ops import fov_to_focal, get_ray_directions, get_rays, orbit_c2w


class BallGeometry(BaseImplicitGeometry):
    """Constant density `sigma` inside a ball, zero outside; colour features and radial normals."""

    @dataclass
    class Config(BaseImplicitGeometry.Config):
        sigma: float = 5.0
        ball_radius: float = 0.5
        center: tuple = (0.0, 0.0, 0.0)
        color: tuple = (2.0, -1.0, 0.0)
        # sigma * (1 - (r / R)^2)^2 instead of a constant: a smooth blob with compact support
        smooth: bool = False

    def configure(self) -> None:
        super().configure()
        self.register_buffer("center", torch.tensor(self.cfg.center, dtype=torch.float32))
        self.register_buffer("color", torch.tensor(self.cfg.color, dtype=torch.float32))
        self.n_evaluated = 0

    def forward_density(self, points):
        self.n_evaluated += points.reshape(-1, 3).shape[0]
        r = (points - self.center).norm(dim=-1, keepdim=True) / self.cfg.ball_radius
        if self.cfg.smooth:
            return self.cfg.sigma * (1 - r ** 2).clamp(min=0) ** 2
        return (r < 1).float() * self.cfg.sigma

    def forward(self, points, output_normal=False):
        out = {"density": self.forward_density(points), "features": self.color.expand(*points.shape[:-1], 3)}
        if output_normal:
            out["normal"] = out["shading_normal"] = F.normalize(points - self.center, dim=-1)
        return out


def make_renderer(geometry, material="no-material", background=None, **cfg):
    material = build_module(material, {}, "system.material")
    background = background or build_module("solid-color-background", {"color": [0.0, 0.0, 1.0]},
                                            "system.background")
    renderer = build_module("nerf-volume-renderer", cfg, "system.renderer", geometry=geometry,
                            material=material, background=background)
    return renderer


def parallel_rays(offsets: torch.Tensor, start: float = -3.0):
    """Rays along +x from x = start through (y, z) = offsets: (1, 1, N, 3) each."""
    n = offsets.shape[0]
    rays_o = torch.cat([torch.full((n, 1), start), offsets], dim=-1).view(1, 1, n, 3)
    rays_d = torch.tensor([1.0, 0.0, 0.0]).expand(1, 1, n, 3).contiguous()
    return rays_o, rays_d


def orbit_rays(n_views: int = 2, size: int = 24, fovy: float = 40.0, distance: float = 3.0):
    elevation = torch.full((n_views,), 20.0)
    azimuth = torch.arange(n_views) * 360.0 / n_views + 15.0
    c2w = orbit_c2w(elevation, azimuth, torch.full((n_views,), distance))
    dirs = get_ray_directions(size, size, fov_to_focal(math.radians(fovy), size))
    rays_o, rays_d = get_rays(dirs, c2w)
    return rays_o, rays_d, c2w[:, :3, 3] * 1.5


@pytest.mark.parametrize("grid_prune", [False, True])
def test_constant_density_ball_matches_closed_form(grid_prune):
    sigma, radius = 4.0, 0.5
    geo = BallGeometry({"sigma": sigma, "ball_radius": radius})
    renderer = make_renderer(geo, num_samples_per_ray=4096, grid_prune=grid_prune, early_stop_eps=0.0)
    if grid_prune:
        renderer.train()
        for step in range(0, 272, 16):
            renderer.do_update_step(0, step)
    renderer.eval()
    b = torch.linspace(0.0, 0.45, 10)
    offsets = torch.stack([b * math.cos(0.3), b * math.sin(0.3)], dim=-1)
    rays_o, rays_d = parallel_rays(offsets)
    with torch.no_grad():
        out = renderer(rays_o, rays_d, light_positions=torch.zeros(1, 3))
    half = torch.sqrt(radius ** 2 - b ** 2)
    length, t_in = 2 * half, 3.0 - half
    absorbed = 1 - torch.exp(-sigma * length)
    depth = t_in * absorbed + absorbed / sigma - length * torch.exp(-sigma * length)
    opacity = out["opacity"].view(-1)
    assert torch.allclose(opacity, absorbed, atol=5e-3), (opacity, absorbed)
    assert torch.allclose(out["depth"].view(-1), depth, atol=1e-2)
    # colour: sigmoid(features) in front of the blue background
    fg = torch.sigmoid(torch.tensor([2.0, -1.0, 0.0]))
    expected_rgb = absorbed[:, None] * fg + (1 - absorbed[:, None]) * torch.tensor([0.0, 0.0, 1.0])
    assert torch.allclose(out["comp_rgb"].view(-1, 3), expected_rgb, atol=5e-3)
    # rays that miss the ball see the background only
    miss_o, miss_d = parallel_rays(torch.tensor([[0.0, 0.8]]))
    with torch.no_grad():
        miss = renderer(miss_o, miss_d, light_positions=torch.zeros(1, 3))
    assert miss["opacity"].item() == pytest.approx(0.0, abs=1e-6)
    assert torch.allclose(miss["comp_rgb"].view(3), torch.tensor([0.0, 0.0, 1.0]))


def test_occupancy_skipping_keeps_the_image_and_skips_samples():
    torch.manual_seed(0)
    geo = BallGeometry({"sigma": 60.0, "ball_radius": 0.25, "center": (0.4, 0.3, -0.2), "color": (1.0, 0.5, -2.0),
                        "smooth": True})
    rays_o, rays_d, lights = orbit_rays(n_views=3, size=32)
    dense = make_renderer(geo, grid_prune=False)
    dense.eval()
    geo.n_evaluated = 0
    with torch.no_grad():
        ref = dense(rays_o, rays_d, lights)
    n_dense = geo.n_evaluated
    pruned = make_renderer(geo, grid_prune=True)
    pruned.train()
    for step in range(0, 272, 16):
        pruned.do_update_step(0, step)
    occupied = pruned.estimator.binaries.float().mean().item()
    assert 0.0 < occupied < 0.05
    pruned.eval()
    geo.n_evaluated = 0
    with torch.no_grad():
        out = pruned(rays_o, rays_d, lights)
    assert ref["opacity"].max() > 0.9  # the ball is in view
    # skipped: empty cells (per-step opacity below 0.01), near-transparent samples and samples
    # behind opaque ones; together they change a pixel by at most a few hundredths
    diff = (out["comp_rgb"] - ref["comp_rgb"]).abs()
    assert float(diff.mean()) < 1e-4 and float(diff.max()) < 0.03
    assert float((out["opacity"] - ref["opacity"]).abs().max()) < 0.03
    assert geo.n_evaluated < 0.05 * n_dense


def test_early_stop_rounds_match_full_visibility():
    gen = torch.Generator().manual_seed(0)
    counts = torch.randint(0, 200, (50,), generator=gen)
    ray_indices = torch.repeat_interleave(torch.arange(50), counts)
    local = torch.cat([torch.arange(int(c)) for c in counts])
    t_starts = local.float() * 0.01
    t_ends = t_starts + 0.01
    sigma_table = torch.rand(ray_indices.shape[0], generator=gen) * 30 * (torch.rand(50, generator=gen)[ray_indices])
    calls = []

    def sigma_fn(ts, te, ri):
        calls.append(ts.shape[0])
        key = (ri * 1000 + torch.round(ts / 0.01).long())
        lookup = torch.full((50 * 1000,), float("nan"))
        lookup[ray_indices * 1000 + local] = sigma_table
        return lookup[key]

    for eps, thre in ((1e-4, 0.01), (1e-2, 0.0), (1e-4, 0.2)):
        calls.clear()
        fast = OccupancyGridEstimator._visible_samples(sigma_fn, ray_indices, t_starts, t_ends, 50, eps, thre)
        full = render_visibility_from_density(t_starts, t_ends, sigma_table, ray_indices, 50, eps, thre)
        assert torch.equal(fast, full)
        assert sum(calls) < ray_indices.shape[0]  # opaque rays were not evaluated to the end


def test_volume_rendering_primitives():
    o = torch.tensor([[-2.0, 0.0, 0.0], [0.0, 0.0, 0.0], [-2.0, 5.0, 0.0]])
    d = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    near, far = ray_aabb_intersect(o, d, torch.tensor([[-1.0] * 3, [1.0] * 3]))
    assert near.tolist()[:2] == [1.0, -1.0] and far.tolist()[:2] == [3.0, 1.0]
    assert far[2] <= near[2]  # missed
    # two rays: 3 and 2 samples; weights are T * alpha with T the exclusive product
    ri = torch.tensor([0, 0, 0, 1, 1])
    ts = torch.tensor([0.0, 1.0, 2.0, 0.0, 0.5])
    te = ts + torch.tensor([1.0, 1.0, 1.0, 0.5, 0.5])
    sig = torch.tensor([0.5, 1.0, 2.0, 3.0, 0.0], requires_grad=True)
    w, trans, alpha = render_weight_from_density(ts, te, sig, ri, 3)
    a = 1 - torch.exp(-torch.tensor([0.5, 1.0, 2.0, 1.5, 0.0]))
    t = torch.tensor([1.0, math.exp(-0.5), math.exp(-1.5), 1.0, math.exp(-1.5)])
    assert torch.allclose(w, t * a, atol=1e-6)
    opacity = accumulate_along_rays(w, ri, 3)
    assert opacity.shape == (3, 1) and opacity[2].item() == 0.0
    assert opacity[0].item() == pytest.approx(1 - math.exp(-3.5), abs=1e-6)
    opacity.sum().backward()
    assert sig.grad is not None and torch.isfinite(sig.grad).all()


def test_occupancy_grid_update_follows_ema_and_threshold():
    est = OccupancyGridEstimator(torch.tensor([-1.0, -1, -1, 1, 1, 1]), resolution=8)
    est.train()
    est.update_every_n_steps(0, lambda x: (x.norm(dim=-1, keepdim=True) < 0.5).float())
    occupied = est.binaries[0]
    assert occupied[4, 4, 4] and not occupied[0, 0, 0]
    before = est.occs.clone()
    est.update_every_n_steps(3, lambda x: torch.zeros(x.shape[0], 1))  # not a multiple of n: no update
    assert torch.equal(est.occs, before)
    est.update_every_n_steps(16, lambda x: torch.zeros(x.shape[0], 1))
    assert torch.allclose(est.occs, before * 0.95)
    est.eval()
    with pytest.raises(RuntimeError, match="training"):
        est.update_every_n_steps(32, lambda x: torch.zeros(x.shape[0], 1))


def test_packed_samples_are_sorted_inside_the_box_and_stratified():
    est = OccupancyGridEstimator(torch.tensor([-1.0, -1, -1, 1, 1, 1]), resolution=16)
    est.fill(True)
    rays_o, rays_d, _ = orbit_rays(n_views=2, size=8)
    ro, rd = rays_o.reshape(-1, 3), rays_d.reshape(-1, 3)
    ri, ts, te = est.sampling(ro, rd, render_step_size=0.05)
    assert torch.all(ri[1:] >= ri[:-1])
    assert torch.allclose(te - ts, torch.full_like(ts, 0.05))
    mid = ro[ri] + rd[ri] * ((ts + te) / 2)[:, None]
    assert float(mid.abs().max()) <= 1.0 + 1e-5
    ri2, ts2, _ = est.sampling(ro, rd, render_step_size=0.05, stratified=True)
    assert not torch.equal(ts2[: min(len(ts), len(ts2))], ts[: min(len(ts), len(ts2))])


def test_training_outputs_and_gradients_with_implicit_volume():
    torch.manual_seed(0)
    geo = build_module("implicit-volume", {
        "normal_type": "analytic",
        "pos_encoding_config": {"otype": "HashGrid", "n_levels": 4, "n_features_per_level": 2,
                                "log2_hashmap_size": 12, "base_resolution": 8, "per_level_scale": 1.5}},
        "system.geometry")
    renderer = make_renderer(geo, material="diffuse-with-point-light-material", num_samples_per_ray=128,
                             return_comp_normal=True)
    rays_o, rays_d, lights = orbit_rays(n_views=2, size=12)
    renderer.train()
    for step in range(0, 64, 16):
        renderer.do_update_step(0, step)
        renderer.sub_modules.material.do_update_step(0, 5000)
    out = renderer(rays_o, rays_d, lights, shading="diffuse")
    n = out["weights"].shape[0]
    assert n > 0
    for key, shape in (("comp_rgb", (2, 12, 12, 3)), ("opacity", (2, 12, 12, 1)), ("depth", (2, 12, 12, 1)),
                       ("z_variance", (2, 12, 12, 1)), ("comp_normal", (2, 12, 12, 3)), ("comp_rgb_bg", (2, 12, 12, 3))):
        assert out[key].shape == shape, key
    for key, shape in (("weights", (n, 1)), ("t_points", (n, 1)), ("t_intervals", (n, 1)), ("ray_indices", (n,)),
                       ("normal", (n, 3)), ("points", (n, 3)), ("density", (n, 1))):
        assert out[key].shape == shape, key
    assert float(out["opacity"].detach().max()) <= 1.0 + 1e-5 and float(out["z_variance"].detach().min()) >= 0.0
    # orientation loss on packed normals + a photometric term: gradients reach the hash grid
    orient = (out["weights"].detach() * F.relu((out["normal"] * -out["t_dirs"]).sum(-1, keepdim=True)) ** 2).sum()
    (out["comp_rgb"].mean() + orient).backward()
    grid_grad = geo.encoding.encoding.encoding.params.grad
    assert grid_grad is not None and float(grid_grad.abs().sum()) > 0


def test_eval_chunking_and_background_options():
    geo = BallGeometry({"sigma": 8.0, "ball_radius": 0.6})
    rays_o, rays_d, lights = orbit_rays(n_views=2, size=10)
    whole = make_renderer(geo, eval_chunk_size=0)
    chunked = make_renderer(geo, eval_chunk_size=97)
    whole.eval()
    chunked.eval()
    with torch.no_grad():
        a = whole(rays_o, rays_d, lights)
        b = chunked(rays_o, rays_d, lights)
        assert torch.allclose(a["comp_rgb"], b["comp_rgb"], atol=1e-6)
        per_view = whole(rays_o, rays_d, lights, bg_color=torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]))
        corner = per_view["comp_rgb"][:, 0, 0]
        assert torch.allclose(corner, torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]))
        with pytest.raises(ValueError, match="bg_color"):
            whole(rays_o, rays_d, lights, bg_color=torch.zeros(5, 5))
        with pytest.raises(ValueError, match=r"\(B, H, W, 3\)"):
            whole(rays_o[0], rays_d[0], lights)


def test_empty_scene_renders_background_and_backpropagates():
    geo = build_module("implicit-volume", {
        "density_bias": -20.0, "density_activation": "relu",
        "pos_encoding_config": {"otype": "HashGrid", "n_levels": 2, "n_features_per_level": 2,
                                "log2_hashmap_size": 10, "base_resolution": 4, "per_level_scale": 2.0}},
        "system.geometry")
    renderer = make_renderer(geo)
    renderer.train()
    renderer.do_update_step(0, 0)
    assert not renderer.estimator.binaries.any()
    rays_o, rays_d, lights = orbit_rays(n_views=1, size=6)
    out = renderer(rays_o, rays_d, lights)
    assert float(out["opacity"].detach().abs().max()) == 0.0
    assert torch.allclose(out["comp_rgb"], torch.tensor([0.0, 0.0, 1.0]).expand(1, 6, 6, 3))
    out["comp_rgb"].sum().backward()  # no samples must not break the training step


def test_renderer_config_errors():
    geo = BallGeometry({})
    with pytest.raises(ConfigError, match="system.renderer.estimator"):
        make_renderer(geo, estimator="proposal")
    with pytest.raises(ConfigError, match="system.renderer"):
        make_renderer(geo, occ_grid_levels=2)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="nerfacc"):
            make_renderer(geo, estimator_backend="nerfacc")


def test_light_per_ray_and_only_material_options_reach_the_material():
    """The camera-batch contract: light_positions per view (B, 3) or per ray (B, H, W, 3); a whole batch may be
    passed (`renderer(**batch)`) and only non-batch keywords reach the material."""
    from threestudio.data.camera_sampling import orbit_cameras

    geo = BallGeometry({"sigma": 8.0, "ball_radius": 0.6})
    renderer = make_renderer(geo, material="diffuse-with-point-light-material", num_samples_per_ray=64,
                             grid_prune=False)
    renderer.eval()
    seen = []
    material = renderer.sub_modules.material
    original = material.forward

    def spy(*args, **kwargs):
        seen.append(set(kwargs))
        return original(*args, **kwargs)

    material.forward = spy
    batch = orbit_cameras(2, 20.0, 3.0, 40.0, 8, 8)
    with torch.no_grad():
        per_view = renderer(**batch, shading="diffuse")
        lights = batch["light_positions"][:, None, None, :].expand(2, 8, 8, 3).clone()
        per_ray = renderer(batch["rays_o"], batch["rays_d"], lights, shading="diffuse")
        torch.testing.assert_close(per_ray["comp_rgb"], per_view["comp_rgb"])
        assert per_view["opacity"][:, :, :4].max() > 0.5
        # a light behind the object for the left half of each image only: that half changes, the right half not
        lights[:, :, :4] = -lights[:, :, :4]
        half = renderer(batch["rays_o"], batch["rays_d"], lights, shading="diffuse")
    assert not torch.allclose(half["comp_rgb"][:, :, :4], per_view["comp_rgb"][:, :, :4])
    torch.testing.assert_close(half["comp_rgb"][:, :, 4:], per_view["comp_rgb"][:, :, 4:])
    batch_keys = {"c2w", "mvp_mtx", "elevation", "azimuth", "camera_distances", "fovy", "height", "width",
                  "camera_positions", "rays_o", "rays_d"}
    assert seen and all("shading" in keys and not keys & batch_keys for keys in seen)
    with pytest.raises(ValueError, match="light_positions"):
        renderer(batch["rays_o"], batch["rays_d"], torch.zeros(3, 3))
