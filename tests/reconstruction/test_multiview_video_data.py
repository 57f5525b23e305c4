"""multiview-video-datamodule: both per-frame layouts, keyed RGB, errors that name the file, training batches."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import threestudio
from threestudio.data.multiview_sources import DatasetError
from threestudio.data.multiview_video import pixel_rays
from threestudio.data.multiview_video_sources import find_frame_files, load_frame_matrix
from threestudio.utils.config import ConfigError
from threestudio.utils.ops import get_ray_directions, get_rays

from reconstruction_test_helpers import make_tiny_dataset_4d


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    root = tmp_path_factory.mktemp("video")
    return {layout: make_tiny_dataset_4d(str(root / layout), layout=layout) for layout in ("diffusion2", "per-frame")}


def test_diffusion2_layout_parses(layouts):
    root = layouts["diffusion2"]
    data = load_frame_matrix(root)
    assert data.layout == "diffusion2"
    assert (data.n_frames, data.n_views, data.height, data.width) == (3, 3, 16, 16)
    torch.testing.assert_close(data.times, torch.tensor([0.0, 0.5, 1.0]))
    assert data.frame_ids == [0, 1, 2]
    meta = json.load(open(os.path.join(root, "transforms_frame_01.json")))
    torch.testing.assert_close(data.c2w[1, 2], torch.tensor(meta["frames"][2]["transform_matrix"], dtype=torch.float32))
    png = np.array(Image.open(os.path.join(root, "view_02", "frame_01.png")))
    assert torch.equal(data.mask[1, 2, ..., 0], torch.from_numpy(png[..., 3]))
    assert data.names[1][2].endswith(os.path.join("view_02", "frame_01.png"))


def test_per_frame_layout_reads_the_same_matrix(layouts):
    a, b = load_frame_matrix(layouts["diffusion2"]), load_frame_matrix(layouts["per-frame"])
    assert b.layout == "per-frame"
    for key in ("rgb", "mask", "c2w", "intrinsics", "times"):
        assert torch.equal(getattr(a, key), getattr(b, key)), key


def test_rgb_on_white_is_keyed_like_orbits(layouts, tmp_path):
    root = str(tmp_path / "rgb")
    shutil.copytree(layouts["diffusion2"], root)
    png = os.path.join(root, "view_01", "frame_02.png")
    rgba = np.asarray(Image.open(png)).astype(np.float32) / 255.0
    on_white = rgba[..., :3] * rgba[..., 3:] + (1 - rgba[..., 3:])
    Image.fromarray((on_white * 255 + 0.5).astype(np.uint8), "RGB").save(png)
    mask = load_frame_matrix(root).mask[2, 1, ..., 0].float() / 255
    solid = torch.from_numpy(rgba[..., 3])
    assert bool((mask[solid > 0.99] == 1).all()) and bool((mask[solid < 0.01] == 0).all())
    assert bool((load_frame_matrix(root, key_background=None).mask[2, 1] == 255).all())


def test_bad_inputs_name_the_file(layouts, tmp_path):
    with pytest.raises(DatasetError, match="No frames in"):
        load_frame_matrix(str(tmp_path))
    root = str(tmp_path / "broken")
    shutil.copytree(layouts["diffusion2"], root)
    os.remove(os.path.join(root, "view_00", "frame_02.png"))
    with pytest.raises(DatasetError, match=r"transforms_frame_02\.json.*view_00/frame_02\.png"):
        load_frame_matrix(root)
    root = str(tmp_path / "fewer")
    shutil.copytree(layouts["diffusion2"], root)
    path = os.path.join(root, "transforms_frame_01.json")
    meta = json.load(open(path))
    meta["frames"] = meta["frames"][:2]
    json.dump(meta, open(path, "w"))
    with pytest.raises(DatasetError, match=r"transforms_frame_01\.json lists 2 views"):
        load_frame_matrix(root)
    meta["time"] = 3.0
    json.dump(meta, open(path, "w"))
    with pytest.raises(DatasetError, match=r"transforms_frame_01\.json: 'time' must be in \[0, 1\]"):
        load_frame_matrix(root)
    root = str(tmp_path / "frames")
    shutil.copytree(layouts["per-frame"], root)
    os.remove(os.path.join(root, "frame_01", "transforms.json"))
    with pytest.raises(DatasetError, match=r"frame_01' has no transforms.json"):
        find_frame_files(root)


def test_pixel_rays_match_full_view_rays(layouts):
    data = load_frame_matrix(layouts["diffusion2"])
    fx, fy, cx, cy = data.intrinsics[1, 2].tolist()
    o, d = get_rays(get_ray_directions(16, 16, (fx, fy), (cx, cy)), data.c2w[1, 2][None])
    rows, cols = torch.tensor([0.0, 5.0, 15.0]), torch.tensor([3.0, 9.0, 15.0])
    n = len(rows)
    po, pd = pixel_rays(data.c2w[1, 2].expand(n, 4, 4), data.intrinsics[1, 2].expand(n, 4), rows, cols)
    torch.testing.assert_close(pd, d[0, rows.long(), cols.long()])
    torch.testing.assert_close(po, o[0, rows.long(), cols.long()])


def _module(root, **overrides):
    cfg = {"dataroot": root, "batch_size": 60, "frames_per_batch": 2, "holdout_views": [2], "holdout_frames": [1],
           "n_test_views": 3, "n_test_fixed_frames": 2, **overrides}
    dm = threestudio.find("multiview-video-datamodule")(cfg)
    dm.setup("fit")
    return dm


def test_training_batches_skip_held_out_pairs_and_repeat_by_step(layouts):
    dm = _module(layouts["diffusion2"])
    batch = dm.train_dataset.batch_at(3)
    assert batch["rays_o"].shape == (1, 60, 1, 3) and batch["times"].shape == (1, 60, 1, 1)
    assert set(batch["frame"].tolist()) == {0, 2}  # frame 1 is held out; 2 frames per batch, 30 rays each
    times = batch["times"].reshape(-1)
    assert torch.equal(times, torch.sort(times).values)  # grouped by frame
    again = dm.train_dataset.batch_at(3)
    assert all(torch.equal(batch[k], again[k]) for k in ("rays_o", "rays_d", "rgb", "bg_color"))
    assert not torch.equal(batch["rays_d"], dm.train_dataset.batch_at(4)["rays_d"])
    # every training ray comes from a training view: it starts at one of their camera centres
    centres = dm.data.c2w[:, :2, :3, 3].reshape(-1, 3)
    dist = (batch["rays_o"].reshape(-1, 1, 3) - centres[None]).norm(dim=-1).min(dim=1).values
    assert float(dist.max()) < 1e-6
    assert dm.heldout_pairs() == [(0, 2), (1, 0), (1, 1), (1, 2), (2, 2)]
    kinds = [dm.test_dataset[i]["kind"] for i in range(len(dm.test_dataset))]
    assert kinds == ["heldout"] * 5 + ["orbit"] * 3 + ["fixed"] * 2
    item = dm.test_dataset[3]
    assert item["heldout_frame"] and item["heldout_view"] and float(item["time"]) == 0.5
    assert len(dm.predict_dataset()) == 3


def test_config_errors_name_the_key(layouts):
    with pytest.raises(ConfigError, match=r"data.holdout_views: \[7\] out of range"):
        _module(layouts["diffusion2"], holdout_views=[7])
    with pytest.raises(ConfigError, match="leave nothing to train on"):
        _module(layouts["diffusion2"], holdout_frames=[0, 1, 2])
