"""Malformed transforms files and unmasked images: a message naming the file and the frame."""
import json
import logging
import os

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, snapshot

GOOD = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 2], [0, 0, 0, 1]]


def _dataset(folder, frames, mode="RGBA"):
    os.makedirs(folder, exist_ok=True)
    channels = {"RGBA": 4, "RGB": 3, "L": 1}[mode]
    pixels = np.full((4, 4, channels), 200, np.uint8)
    Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode).save(os.path.join(folder, "a.png"))
    path = os.path.join(folder, "transforms.json")
    with open(path, "w") as fp:
        json.dump({"camera_angle_x": 0.8, "frames": frames}, fp)
    return path


@pytest.mark.parametrize("frames,message", [
    # before: numpy "inhomogeneous shape" ValueError shown as "Configuration error", no file named
    ([{"file_path": "a.png", "transform_matrix": [[1, 0, 0, 0], [0, 1, 0], [0, 0, 1, 2], [0, 0, 0, 1]]}],
     "frames[0].transform_matrix must be a 4x4 (or 3x4) list of rows of numbers"),
    # before: accepted; NaN cameras trained into NaN parameters
    ([{"file_path": "a.png", "transform_matrix": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, float("nan")], [0, 0, 0, 1]]}],
     "frames[0].transform_matrix contains NaN or infinite values"),
    ([{"file_path": "a.png", "transform_matrix": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, float("inf")], [0, 0, 0, 1]]}],
     "frames[0].transform_matrix contains NaN or infinite values"),
    ([{"file_path": "a.png", "transform_matrix": [["x", 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 2], [0, 0, 0, 1]]}],
     "frames[0].transform_matrix holds non-numbers"),
    ([{"file_path": "a.png", "transform_matrix": 5}], "frames[0].transform_matrix must be a 4x4"),
    # before: "frames[0] has no 'file_path'" for a string (substring test) and a TypeError for a number
    (["a.png"], "frames[0] must be an object with 'file_path' and 'transform_matrix', got str"),
    ([{"file_path": "a.png", "transform_matrix": GOOD}, 7], "frames[1] must be an object"),
    ([{"file_path": 3, "transform_matrix": GOOD}], "frames[0].file_path must be a non-empty string"),
])
def test_malformed_frames_name_file_and_frame(tmp_path, frames, message):
    from threestudio.data.multiview_sources import DatasetError, load_transforms

    path = _dataset(str(tmp_path / "data"), frames)
    before = snapshot(tmp_path)
    with pytest.raises(DatasetError) as info:
        load_transforms(path)
    assert str(info.value).startswith(path) and message in str(info.value)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_unmasked_images_warn_and_point_to_key_background(tmp_path, caplog, mode):
    """Before: trained with mask = 1 everywhere without a word."""
    from threestudio.data.multiview_sources import load_transforms

    path = _dataset(str(tmp_path / "data"), [{"file_path": "a.png", "transform_matrix": GOOD}], mode=mode)
    with caplog.at_level(logging.WARNING, logger="threestudio"):
        views = load_transforms(path)
    assert not views.has_mask and float(views.masks.min()) == 1.0
    assert "no alpha channel and no mask folder" in caplog.text and "data.key_background=white" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="threestudio"):
        keyed = load_transforms(path, key_background="black")
    assert keyed.has_mask and "no alpha channel" not in caplog.text


def test_bad_data_stops_launch_with_exit_code_2(launch, tmp_path):
    frames = [{"file_path": "a.png", "transform_matrix": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, float("nan")], [0, 0, 0, 1]]}]
    path = _dataset(str(tmp_path / "data"), frames)
    before = snapshot(tmp_path)
    code, err = launch("--train", f"exp_root_dir={tmp_path / 'out'}", f"data.dataroot={tmp_path / 'data'}",
                       config=os.path.join(REPO, "configs", "reconstruction-example.yaml"))
    assert code == 2
    assert f"Data error: {path}: frames[0].transform_matrix contains NaN" in err
    assert snapshot(tmp_path) == before and not (tmp_path / "out").exists()
