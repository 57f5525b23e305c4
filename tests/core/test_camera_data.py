import math

import pytest
import torch

import threestudio
from threestudio.utils.config import ConfigError
from threestudio.utils.ops import camera_positions_from_spherical, get_ray_directions, get_rays, orbit_c2w


def test_camera_at_azimuth_zero_looks_from_plus_x():
    c2w = orbit_c2w(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([2.0]))[0]
    expected = torch.tensor([
        [0.0, 0.0, 1.0, 2.0],   # x right = world +y, camera z (backwards) = world +x
        [1.0, 0.0, 0.0, 0.0],
        [0.0, 1.0, 0.0, 0.0],   # y up = world +z
        [0.0, 0.0, 0.0, 1.0],
    ])
    torch.testing.assert_close(c2w, expected, atol=1e-6, rtol=0)


def test_spherical_positions_match_the_formula():
    e, a, d = 30.0, 120.0, 1.5
    pos = camera_positions_from_spherical(torch.tensor([e]), torch.tensor([a]), torch.tensor([d]))[0]
    er, ar = math.radians(e), math.radians(a)
    expected = torch.tensor([d * math.cos(er) * math.cos(ar), d * math.cos(er) * math.sin(ar), d * math.sin(er)])
    torch.testing.assert_close(pos, expected)


def test_centre_ray_hits_origin_and_top_row_points_up():
    c2w = orbit_c2w(torch.tensor([20.0]), torch.tensor([70.0]), torch.tensor([3.0]))
    dirs = get_ray_directions(5, 5, 4.0)
    rays_o, rays_d = get_rays(dirs, c2w)
    centre_o, centre_d = rays_o[0, 2, 2], rays_d[0, 2, 2]
    t = -(centre_o * centre_d).sum()
    torch.testing.assert_close(centre_o + t * centre_d, torch.zeros(3), atol=1e-5, rtol=0)
    assert rays_d[0, 0, 2, 2] > rays_d[0, 4, 2, 2]  # row 0 is the top of the image (world z up)


def _multiview(**overrides):
    cfg = {"batch_size": [8, 4], "height": [16, 32], "width": [16, 32], "resolution_milestones": [10],
           "n_val_views": 3, "n_test_views": 120, "eval_height": 8, "eval_width": 8}
    cfg.update(overrides)
    dm = threestudio.find("random-multiview-camera-datamodule")(cfg)
    dm.setup()
    return dm


def test_multiview_batches_share_camera_and_space_azimuths():
    dm = _multiview()
    batch = dm.train_dataset.batch_at(0)
    assert batch["rays_o"].shape == (8, 16, 16, 3) and batch["c2w"].shape == (8, 4, 4)
    for key in ("elevation", "fovy", "camera_distances"):
        groups = batch[key].view(2, 4)
        assert torch.equal(groups, groups[:, :1].expand(-1, 4)), key
    steps = torch.diff(batch["azimuth"].view(2, 4), dim=1)
    torch.testing.assert_close(steps, torch.full((2, 3), 90.0))
    assert ((batch["elevation"] >= 0) & (batch["elevation"] <= 30)).all()
    # relative radius: distance * tan(fovy / 2) is the sampled relative radius in [0.8, 1.0]
    rel = batch["camera_distances"] * torch.tan(torch.deg2rad(batch["fovy"]) / 2)
    assert ((rel >= 0.8 - 1e-5) & (rel <= 1.0 + 1e-5)).all()
    # cameras sit where elevation/azimuth/distance say and look at the origin
    pos = camera_positions_from_spherical(batch["elevation"], batch["azimuth"], batch["camera_distances"])
    torch.testing.assert_close(batch["camera_positions"], pos, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(-batch["c2w"][:, :3, 2], -pos / pos.norm(dim=-1, keepdim=True), atol=1e-5, rtol=0)


def test_resolution_and_batch_size_follow_milestones():
    dm = _multiview()
    assert dm.train_dataset.batch_at(9)["rays_d"].shape == (8, 16, 16, 3)
    assert dm.train_dataset.batch_at(10)["rays_d"].shape == (4, 32, 32, 3)


def test_batches_depend_only_on_seed_and_step():
    dm = _multiview()
    a, b = dm.train_dataset.batch_at(3), dm.train_dataset.batch_at(3)
    assert torch.equal(a["c2w"], b["c2w"])
    assert not torch.equal(a["c2w"], dm.train_dataset.batch_at(4)["c2w"])


def test_eval_orbits():
    dm = _multiview()
    assert len(dm.val_dataset) == 3 and len(dm.test_dataset) == 120
    view = dm.test_dataset[30]
    assert view["rays_o"].shape == (1, 8, 8, 3)
    assert view["azimuth"].item() == pytest.approx(90.0)
    assert view["index"].item() == 30


def test_eval_distance_is_absolute_even_with_relative_training_radius():
    # MVDream-threestudio: training distances are relative (divided by tan(fovy/2)), evaluation ones are not
    dm = _multiview(eval_camera_distance=3.0, eval_fovy_deg=40.0)
    assert dm.cfg.relative_radius
    for dataset in (dm.val_dataset, dm.test_dataset):
        view = dataset[0]
        torch.testing.assert_close(view["camera_positions"].norm(dim=-1), torch.tensor([3.0]))


def test_single_view_module_perturbs_and_stratifies_azimuth():
    dm = threestudio.find("random-camera-datamodule")({"batch_size": 4, "height": 8, "width": 8})
    dm.setup()
    batch = dm.train_dataset.batch_at(0)
    sectors = ((batch["azimuth"] + 180) // 90).long()
    assert sorted(sectors.tolist()) == [0, 1, 2, 3]


def test_bad_data_configs():
    with pytest.raises(ConfigError, match="batch_size 6 must be a multiple of data.n_view \\(4\\)"):
        _multiview(batch_size=6, height=16, width=16, resolution_milestones=[])
    with pytest.raises(ConfigError, match="data.height has 3 values but resolution_milestones defines 2 phases"):
        _multiview(height=[1, 2, 3])
