"""Reference image preprocessing: alpha crop, centring with image_frame_ratio, white background; CLIP resize."""

import sys

import numpy as np
import pytest
import torch
from PIL import Image

from sv3d import clip_preprocess, preprocess_orbit_image
from sv3d.preprocess import antialiased_resize


def _bbox(arr, thresh=128):
    ys, xs = np.nonzero((arr < thresh).any(axis=-1))  # dark-ish object pixels on white
    return xs.min(), xs.max(), ys.min(), ys.max()


def test_alpha_crop_centre_and_white_background(rgba_object):
    out = np.asarray(preprocess_orbit_image(rgba_object, image_frame_ratio=None, size=100))
    assert out.shape == (100, 100, 3)
    # no ratio: the square's side is the image height (100) -> the 40x50 box keeps its size, centred
    x0, x1, y0, y1 = _bbox(out[..., 1:], 128)  # red object: low green/blue
    assert (x1 - x0 + 1, y1 - y0 + 1) == (40, 50)
    assert (x0 + x1) / 2 == pytest.approx(49.5, abs=1) and (y0 + y1) / 2 == pytest.approx(49.5, abs=1)
    assert np.all(out[:5, :5] == 255)  # transparent area becomes white


@pytest.mark.parametrize("ratio", [0.5, 0.8])
def test_image_frame_ratio_sets_object_size(rgba_object, ratio):
    out = np.asarray(preprocess_orbit_image(rgba_object, image_frame_ratio=ratio, size=200))
    x0, x1, y0, y1 = _bbox(out[..., 1:], 128)
    assert (y1 - y0 + 1) / 200 == pytest.approx(ratio, abs=0.02)  # the longer side (50 px high)
    assert (x1 - x0 + 1) / (y1 - y0 + 1) == pytest.approx(40 / 50, abs=0.03)
    assert (x0 + x1) / 2 == pytest.approx(99.5, abs=1.5) and (y0 + y1) / 2 == pytest.approx(99.5, abs=1.5)


def test_bad_inputs_have_clear_errors(tmp_path, monkeypatch):
    rgb = tmp_path / "rgb.png"
    Image.new("RGB", (32, 32), (10, 20, 30)).save(rgb)
    monkeypatch.setitem(sys.modules, "rembg", None)  # as if rembg were not installed
    with pytest.raises(ValueError, match="pass an RGBA image"):
        preprocess_orbit_image(str(rgb))
    empty = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    with pytest.raises(ValueError, match="alpha channel is empty"):
        preprocess_orbit_image(empty)
    with pytest.raises(ValueError, match="image_frame_ratio"):
        preprocess_orbit_image(Image.new("RGBA", (8, 8), (1, 1, 1, 255)), image_frame_ratio=1.5)


def test_clip_preprocess_blurs_before_shrinking_and_normalises():
    x = torch.zeros(1, 3, 576, 576)
    x[..., 288, 288] = 1.0
    r = antialiased_resize(x, 224)
    # 576 -> 224: Gaussian of sigma (576/224 - 1) / 2 on a 3-tap kernel before bicubic resampling
    sig = (576 / 224 - 1) / 2
    k = np.exp(-np.array([1.0, 0.0, 1.0]) / (2 * sig**2))
    k /= k.sum()
    assert r.shape == (1, 3, 224, 224)
    blurred = torch.zeros(1, 1, 576, 576)
    blurred[..., 287:290, 287:290] = torch.tensor(np.outer(k, k), dtype=torch.float32)
    expect = torch.nn.functional.interpolate(blurred, size=(224, 224), mode="bicubic", align_corners=True)
    assert torch.allclose(r[:, :1], expect, atol=1e-6)
    grey = clip_preprocess(torch.zeros(2, 3, 300, 300))  # 0 in [-1, 1] is grey 0.5
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    assert torch.allclose(grey, ((0.5 - mean) / std).expand(2, 3, 224, 224), atol=1e-5)


def test_square_frame_kept_whole_without_recentring():
    arr = np.zeros((40, 40, 4), np.uint8)
    arr[0:10, 0:10] = (200, 0, 0, 255)  # object in the corner stays in the corner
    out = np.asarray(preprocess_orbit_image(Image.fromarray(arr), None, size=80, recentre=False))
    assert out.shape == (80, 80, 3)
    assert out[5, 5].tolist() == [200, 0, 0] and out[60, 60].tolist() == [255, 255, 255]
    with pytest.raises(ValueError, match="not square: give an image_frame_ratio"):
        preprocess_orbit_image(Image.new("RGBA", (40, 30), (1, 1, 1, 255)), None, recentre=False)
