"""multiview-image-datamodule: both data conventions, ray geometry, batches, and errors on bad input."""
from __future__ import annotations

import json
import math
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import threestudio
from threestudio.data.multiview_sources import DatasetError, load_orbit, load_transforms, orbit_azimuths
from threestudio.utils.misc import step_seed

from reconstruction_test_helpers import load_script, make_tiny_dataset


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    return make_tiny_dataset(str(tmp_path_factory.mktemp("tiny") / "obj"))


def datamodule(**cfg):
    return threestudio.find("multiview-image-datamodule")(cfg)


def test_transforms_splits_and_rays_hit_the_object(tiny):
    dm = datamodule(dataroot=tiny, test_views="split", n_val_views=1)
    assert (len(dm.train_views), len(dm.val_views), len(dm.test_views)) == (6, 1, 2)
    focal = 0.5 * 24 / math.tan(math.radians(20))
    assert torch.allclose(dm.train_views.intrinsics[0], torch.tensor([focal, focal, 12.0, 12.0]), atol=1e-3)
    dm.setup("fit")
    # the dataset's pixel rays, cast into the analytic scene, must hit exactly where the mask is set
    scene = load_script("procedural_scene").example_scene()
    view = dm.val_dataset[0]
    o = view["rays_o"].reshape(-1, 3).double().numpy()
    d = view["rays_d"].reshape(-1, 3).double().numpy()
    _, index = scene.intersect(o, d)
    mask = view["mask"].reshape(-1).numpy() > 0.5
    assert mask.sum() > 20
    np.testing.assert_array_equal(index >= 0, mask)
    # composited on white outside the mask
    assert torch.all(view["rgb"][0][~torch.from_numpy(mask).reshape(24, 24)] == 1.0)


def test_random_ray_batches_are_reproducible_and_composited(tiny):
    dm = datamodule(dataroot=tiny, batch_size=256, background="random")
    dm.setup("fit")
    a, b, c = dm.train_dataset.batch_at(3), dm.train_dataset.batch_at(3), dm.train_dataset.batch_at(4)
    assert a["rays_o"].shape == (1, 256, 1, 3) and a["bg_color"].shape == (1, 256, 1, 3)
    assert torch.equal(a["rgb"], b["rgb"]) and not torch.equal(a["rays_d"], c["rays_d"])
    assert torch.allclose(a["rays_d"].norm(dim=-1), torch.ones(1, 256, 1))
    empty = a["mask"][..., 0] == 0
    assert empty.any()
    assert torch.allclose(a["rgb"][empty], a["bg_color"][empty])
    # every ray is lit from its own view's camera (the rays of one batch come from many views)
    ds = dm.train_dataset
    assert a["light_positions"].shape == (1, 256, 1, 3)
    gen = torch.Generator().manual_seed(step_seed(ds.seed, 3, "rays"))
    index = torch.randint(0, ds.rays_o.shape[0], (256,), generator=gen)
    views = index // ds.pixels_per_view
    assert len(set(views.tolist())) > 1
    torch.testing.assert_close(a["light_positions"].reshape(256, 3), ds.camera_positions[views])
    torch.testing.assert_close(a["rays_o"].reshape(256, 3), ds.camera_positions[views])


def test_single_file_with_fl_xy_holdout_and_resize(tmp_path, tiny):
    meta = json.load(open(os.path.join(tiny, "transforms_train.json")))
    frames = []
    for f in meta["frames"]:
        frames.append({"file_path": os.path.join(tiny, f["file_path"]), "transform_matrix": f["transform_matrix"]})
    frames[1]["fl_x"] = 40.0  # per-frame override (instant-ngp)
    path = tmp_path / "transforms.json"
    path.write_text(json.dumps({"fl_x": 30.0, "fl_y": 31.0, "cx": 11.0, "cy": 13.0, "w": 24, "h": 24,
                                "frames": frames}))
    views = load_transforms(str(path))
    assert torch.allclose(views.intrinsics[0], torch.tensor([30.0, 31.0, 11.0, 13.0]))
    assert float(views.intrinsics[1, 0]) == 40.0
    dm = datamodule(dataroot=str(tmp_path), holdout_every=3, height=12, width=12)
    assert len(dm.train_views) == 4 and len(dm.val_views) == 2
    assert dm.train_views.images.shape == (4, 12, 12, 3)
    assert torch.allclose(dm.val_views.intrinsics[0], torch.tensor([15.0, 15.5, 5.5, 6.5]))


def _write_orbit(folder: str, n: int, size: int = 16) -> list:
    os.makedirs(folder, exist_ok=True)
    frames = []
    for i in range(n):
        img = np.full((size, size, 3), 255, np.uint8)
        img[4:12, 4:12] = (30 * i % 255, 100, 200)
        Image.fromarray(img).save(os.path.join(folder, f"frame_{i}.png"))
        frames.append(img)
    return frames


def test_orbit_folder_convention(tmp_path):
    folder = str(tmp_path / "orbit")
    _write_orbit(folder, 12)  # frame_10 must sort after frame_9
    views = load_orbit(folder, elevation_deg=10.0, distance=2.0, fovy_deg=40.0)
    assert len(views) == 12 and views.names[-1].endswith("frame_11.png")
    e = math.radians(10.0)
    # the last frame is the input view: azimuth 0, camera on +x
    assert torch.allclose(views.c2w[-1, :3, 3], torch.tensor([2 * math.cos(e), 0.0, 2 * math.sin(e)]), atol=1e-5)
    assert torch.allclose(orbit_azimuths(4), torch.tensor([90.0, 180.0, 270.0, 0.0]))
    # white background keyed out as the mask
    assert views.masks[0, 0, 0, 0] == 0 and views.masks[0, 8, 8, 0] == 1
    dm = datamodule(dataroot=folder, orbit_elevation_deg=[float(i) for i in range(12)], n_test_views=5)
    dm.setup("test")
    assert len(dm.test_dataset) == 5 and dm.test_dataset[0]["rays_o"].shape == (1, 16, 16, 3)


def test_orbit_video_convention(tmp_path):
    import imageio.v2 as imageio

    frames = _write_orbit(str(tmp_path / "frames"), 5, size=32)
    video = str(tmp_path / "orbit.mp4")
    imageio.mimwrite(video, frames, fps=5, macro_block_size=1)
    dm = datamodule(dataroot=video, orbit_elevation_deg=5.0, orbit_distance=1.5)
    assert len(dm.train_views) == 5 and dm.train_views.images.shape[1:] == (32, 32, 3)
    assert torch.allclose(dm.train_views.c2w[:, :3, 3].norm(dim=-1), torch.full((5,), 1.5))


# ---------------------------------------------------------------------------- malformed input
def _copy(tiny: str, tmp_path) -> str:
    out = str(tmp_path / "copy")
    shutil.copytree(tiny, out)
    return out


def test_missing_image_names_file_and_frame(tmp_path, tiny):
    root = _copy(tiny, tmp_path)
    os.remove(os.path.join(root, "train", "r_002.png"))
    with pytest.raises(DatasetError, match=r"transforms_train\.json: frames\[2\]\.file_path.*r_002.*does not exist"):
        datamodule(dataroot=root)


def test_missing_key_names_file_and_key(tmp_path, tiny):
    root = _copy(tiny, tmp_path)
    path = os.path.join(root, "transforms_train.json")
    meta = json.load(open(path))
    del meta["frames"][1]["transform_matrix"]
    json.dump(meta, open(path, "w"))
    with pytest.raises(DatasetError, match=r"transforms_train\.json: frames\[1\] has no 'transform_matrix'"):
        datamodule(dataroot=root)
    del meta["camera_angle_x"]
    meta["frames"][1]["transform_matrix"] = meta["frames"][0]["transform_matrix"]
    json.dump(meta, open(path, "w"))
    with pytest.raises(DatasetError, match=r"transforms_train\.json: no camera intrinsics.*camera_angle_x"):
        datamodule(dataroot=root)


def test_non_image_file_is_named(tmp_path, tiny):
    root = _copy(tiny, tmp_path)
    with open(os.path.join(root, "test", "r_001.png"), "w") as fp:
        fp.write("not an image")
    with pytest.raises(DatasetError, match=r"r_001\.png' is not a readable image"):
        datamodule(dataroot=root)


def test_mismatched_orbit_frame_count(tmp_path):
    folder = str(tmp_path / "orbit")
    _write_orbit(folder, 4)
    with pytest.raises(DatasetError, match=r"has 4 frames but 3 elevations"):
        datamodule(dataroot=folder, orbit_elevation_deg=[0.0, 10.0, 20.0])


def test_missing_dataroot_and_bad_options(tmp_path):
    from threestudio.utils.config import ConfigError

    with pytest.raises(DatasetError, match="does not exist"):
        datamodule(dataroot=str(tmp_path / "nothing"))
    with pytest.raises(ConfigError, match="data.dataroot"):
        datamodule()
    with pytest.raises(ConfigError, match="background"):
        datamodule(dataroot=str(tmp_path), background="green")
