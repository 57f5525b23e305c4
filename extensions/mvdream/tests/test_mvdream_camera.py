"""Camera helpers: MVDream's orbit convention, the toolkit's z-up c2w matrices, and the 16-d UNet input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mvdream import c2w_to_camera, get_camera, mvdream_c2w, orbit_c2w, toolkit_to_mvdream_azimuth


def test_mvdream_default_views_look_at_origin_from_expected_positions():
    cams = get_camera(4, elevation=15, azimuth_start=90).reshape(4, 4, 4).double()
    e = np.radians(15)
    # MVDream azimuth 90, 180, 270, 360 -> from +x, +y, -x, -y in the z-up world.
    expected = [(np.cos(e), 0, np.sin(e)), (0, np.cos(e), np.sin(e)), (-np.cos(e), 0, np.sin(e)), (0, -np.cos(e), np.sin(e))]
    for cam, position in zip(cams, expected):
        np.testing.assert_allclose(cam[:3, 3], position, atol=1e-6)
        rot = cam[:3, :3]
        np.testing.assert_allclose(rot.T @ rot, np.eye(3), atol=1e-6)
        assert torch.det(rot) == pytest.approx(1.0, abs=1e-6)
        np.testing.assert_allclose(-rot[:, 2], -cam[:3, 3] / cam[:3, 3].norm(), atol=1e-6)  # looks along -z at origin
        assert rot[2, 1] > 0  # camera up has a positive world-z component
        np.testing.assert_allclose(cam[3], [0, 0, 0, 1])


def test_toolkit_c2w_gives_the_same_camera_input():
    for elevation, azimuth, distance in [(15, 0, 2.5), (30, 123, 1.2), (-10, 270, 4.0), (0, 45, 0.9)]:
        ours = c2w_to_camera(torch.from_numpy(orbit_c2w(elevation, azimuth, distance)))
        mvdream = torch.from_numpy(mvdream_c2w(elevation, toolkit_to_mvdream_azimuth(azimuth)).reshape(16))
        torch.testing.assert_close(ours, mvdream, atol=1e-6, rtol=0)


def test_c2w_to_camera_normalises_translation_and_flattens_row_major():
    c2w = torch.eye(4).repeat(2, 3, 1, 1)
    c2w[..., :3, 3] = torch.tensor([0.0, 3.0, 4.0])
    cam = c2w_to_camera(c2w)
    assert cam.shape == (2, 3, 16)
    torch.testing.assert_close(cam[0, 0, [3, 7, 11]], torch.tensor([0.0, 0.6, 0.8]))
    torch.testing.assert_close(cam[0, 0, [0, 5, 10, 15]], torch.ones(4))
    assert c2w[0, 0, 1, 3] == 3.0  # input untouched
    with pytest.raises(ValueError, match=r"\(\.\.\., 4, 4\)"):
        c2w_to_camera(torch.zeros(3, 16))


def test_y_up_variant_is_the_unrotated_matrix():
    z_up, y_up = mvdream_c2w(20, 40), mvdream_c2w(20, 40, blender_coord=False)
    np.testing.assert_allclose(z_up[:3, 3], [y_up[0, 3], -y_up[2, 3], y_up[1, 3]], atol=1e-12)
