"""The camera-batch contract (threestudio/utils/batch.py)."""
from __future__ import annotations

import pytest
import torch

from threestudio.data.camera_sampling import orbit_cameras
from threestudio.utils.batch import BATCH_KEYS, RENDER_INPUTS, per_ray, render_inputs, render_options


def test_data_modules_produce_only_documented_keys():
    batch = orbit_cameras(3, 10.0, 2.0, 40.0, 4, 5)
    assert set(batch) <= BATCH_KEYS
    assert set(render_inputs(batch)) == {"rays_o", "rays_d", "light_positions"}
    assert set(RENDER_INPUTS) <= BATCH_KEYS


def test_render_options_keep_only_material_options():
    batch = orbit_cameras(1, 10.0, 2.0, 40.0, 4, 4)
    options = render_options({**batch, "orbit": dict(batch), "shading": "albedo", "ambient_ratio": None,
                              "ambient": 0.2})
    assert options == {"shading": "albedo", "ambient": 0.2}


def test_per_ray_broadcasts_view_and_global_values():
    per_view = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    rows = per_ray(per_view, 2, 2, 3, "light_positions")
    assert rows.shape == (12, 3)
    assert torch.equal(rows[:6], per_view[0].expand(6, 3)) and torch.equal(rows[6:], per_view[1].expand(6, 3))
    assert torch.equal(per_ray(torch.ones(3), 2, 2, 3, "bg_color"), torch.ones(12, 3))
    rays = torch.arange(36.0).reshape(2, 2, 3, 3)
    assert torch.equal(per_ray(rays, 2, 2, 3, "light_positions"), rays.reshape(12, 3))
    with pytest.raises(ValueError, match=r"light_positions must have shape.*B, H, W = 2, 2, 3.*\(3, 3\)"):
        per_ray(torch.zeros(3, 3), 2, 2, 3, "light_positions")
