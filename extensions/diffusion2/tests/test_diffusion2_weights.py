"""Mixing weights from the azimuths, the reference's hard-coded table, and the four scale schedules."""

import math

import pytest
import torch
from sv3d import orbit_azimuths_deg

from diffusion2 import SCHEDULES, mixing_weights, multiview_scale, video_view_weights

# diffusion-square main.py (59bcd26): the 21 values 0.5 * (1 + cos(2 pi (v + 1) / 10.5)) of the default orbit
REFERENCE_TABLE = [
    0.91311939, 0.68267051, 0.38873953, 0.13347406, 0.00558459,
    0.04951557, 0.25, 0.53736505, 0.8117449, 0.9777864,
    0.9777864, 0.8117449, 0.53736505, 0.25, 0.04951557,
    0.00558459, 0.13347406, 0.38873953, 0.68267051, 0.91311939,
    1.0,
]


def test_default_grid_equals_the_reference_table():
    vw = video_view_weights(orbit_azimuths_deg(21))
    ref_view_weight = 1 - 0.75 * (1 - torch.tensor(REFERENCE_TABLE, dtype=torch.float64))
    assert torch.allclose(vw, ref_view_weight, atol=1e-8)
    s = 0.6  # the reference's default constant sv3d_scale
    w_mv, w_vid = mixing_weights(vw, s)
    # the reference stacks [1 - vw + vw * s, vw * (1 - s)] as (sv3d, svd) weights
    assert torch.allclose(w_mv, 1 - ref_view_weight + ref_view_weight * s, atol=1e-8)
    assert torch.allclose(w_vid, ref_view_weight * (1 - s), atol=1e-8)
    assert w_vid[-1] == pytest.approx(0.4) and w_vid.min() == pytest.approx(0.25 * 0.4, abs=2e-3)


def test_weights_follow_the_actual_azimuths():
    az = [72.0, 144.0, 216.0, 288.0, 0.0]  # a 5-view orbit
    vw = video_view_weights(az)
    expect = [0.25 + 0.75 * math.cos(math.radians(a)) ** 2 for a in az]
    assert vw.tolist() == pytest.approx(expect)
    assert video_view_weights([90.0, 180.0, 270.0, 0.0]).tolist() == pytest.approx([0.25, 1.0, 0.25, 1.0])
    w_mv, w_vid = mixing_weights(vw, 0.25)
    assert torch.allclose(w_mv + w_vid, torch.ones(5, dtype=torch.float64))
    assert w_vid.tolist() == pytest.approx([0.75 * e for e in expect])
    assert torch.equal(mixing_weights(vw, 1.0)[1], torch.zeros(5, dtype=torch.float64))


def test_scale_schedules():
    n = 50
    assert [multiview_scale(i, n) for i in (0, 25, 49)] == [0.6, 0.6, 0.6]
    lin = [multiview_scale(i, n, "linear", scale_min=0.2, scale_max=0.8) for i in range(n)]
    assert lin[0] == pytest.approx(0.8) and lin[-1] == pytest.approx(0.2)
    assert all(b < a for a, b in zip(lin, lin[1:])) and lin[1] - lin[0] == pytest.approx(-0.6 / 49)
    cos = [multiview_scale(i, 51, "cosine", scale_min=0.0, scale_max=1.0) for i in range(51)]
    assert cos[0] == pytest.approx(1.0) and cos[25] == pytest.approx(0.5) and cos[50] == pytest.approx(0.0, abs=1e-12)
    assert cos[10] == pytest.approx((math.cos(0.2 * math.pi) + 1) / 2)
    logi = [multiview_scale(i, 51, "logistic", scale=0.4, scale_min=0.1, scale_max=0.9, k=15.0) for i in range(51)]
    assert logi[20] == pytest.approx(0.5)  # the midpoint at x = scale
    assert logi[0] == pytest.approx(0.1 + 0.8 * (1 - 1 / (1 + math.exp(15 * 0.4))))
    assert all(b < a for a, b in zip(logi, logi[1:]))
    assert set(SCHEDULES) == {"constant", "linear", "cosine", "logistic"}
    with pytest.raises(ValueError, match="unknown scale schedule 'exp'"):
        multiview_scale(0, n, "exp")
