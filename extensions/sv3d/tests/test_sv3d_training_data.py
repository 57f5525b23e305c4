"""Dataset readers (svd_meta.jsonl, Hi3D folders, transforms.json), clip sampling and `python -m sv3d.check_dataset`."""

import json
import os

import pytest
import torch
from PIL import Image

from sv3d.check_dataset import main as check_main
from sv3d.training import DatasetError, OrbitClipDataset, RankBatchSampler, read_dataset
from sv3d.training.dummy_data import write_hi3d_dataset, write_svd_meta_dataset, write_transforms_dataset


def test_meta_lines_parse_as_json_or_python_literals_never_eval(tmp_path):
    root = tmp_path / "d"
    write_svd_meta_dataset(str(root), num_objects=2, num_views=4, size=16, literal_lines=True)
    objs = read_dataset(str(root))
    assert [o.name for o in objs] == ["001", "002"] and objs[0].rings[0].elevations_deg == [20.0] * 4
    assert objs[0].rings[0].azimuths_deg == [0.0, 90.0, 180.0, 270.0]
    meta = root / "svd_meta.jsonl"
    lines = meta.read_text().splitlines()
    marker = tmp_path / "pwned"
    lines.insert(1, f"__import__('os').system('touch {marker}')")
    meta.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"svd_meta\.jsonl:2: not a JSON object nor a Python dict literal"):
        read_dataset(str(root))
    assert not marker.exists()


@pytest.mark.parametrize("line, message", [
    ('{"image_path": ["a.png", "b.png"]}', r":3: missing key 'elevation'"),
    ('{"image_path": ["a.png", "b.png"], "elevation": [1.0]}', r":3: 'elevation' has 1 values but 'image_path' has 2"),
    ('{"image_path": [], "elevation": []}', r":3: 'image_path' must be a non-empty list"),
    ('[1, 2]', r":3: expected an object"),
    ('{"image_path": ["a.png"], "elevation": ["x"]}', r":3: 'elevation' must be a list of numbers"),
])
def test_malformed_meta_line_is_named_with_its_number(tmp_path, line, message):
    meta = tmp_path / "svd_meta.jsonl"
    ok = json.dumps({"image_path": ["a.png"], "elevation": [0.0]})
    meta.write_text(f"{ok}\n\n{line}\n{ok}\n")
    with pytest.raises(DatasetError, match=message):
        read_dataset(str(tmp_path))


def test_check_dataset_names_every_bad_line_and_file(tmp_path, capsys):
    root = tmp_path / "d"
    write_svd_meta_dataset(str(root), num_objects=2, num_views=4, size=16)
    meta = root / "svd_meta.jsonl"
    meta.write_text(meta.read_text() + "{broken\n" + '{"image_path": ["x.png"]}\n')
    os.remove(root / "002" / "003.png")
    (root / "001" / "001.png").write_bytes(b"not a png")
    assert check_main(["--root", str(root), "--num_frames", "3"]) == 1
    out = capsys.readouterr().out
    assert f"{meta}:3: not a JSON object" in out and f"{meta}:4: missing key 'elevation'" in out
    assert f"{root / '002' / '003.png'}: missing" in out and f"{root / '001' / '001.png'}: unreadable image" in out
    assert "2 objects, 8 views, 4 problem(s)" in out
    clean = tmp_path / "c"
    write_svd_meta_dataset(str(clean), num_objects=1, num_views=4, size=16)
    assert check_main(["--root", str(clean)]) == 0


def test_hi3d_folders_rings_in_file_order_and_bad_folder(tmp_path):
    write_hi3d_dataset(str(tmp_path), num_objects=1, views_per_ring=4, size=8)
    obj = read_dataset(str(tmp_path), "hi3d", hi3d_views_per_ring=4)[0]
    assert [r.elevations_deg[0] for r in obj.rings] == [-10, 0, 10, 20, 30, 40]
    assert [os.path.basename(p) for p in obj.rings[1].image_paths] == ["004.png", "005.png", "006.png", "007.png"]
    os.remove(tmp_path / "images" / "obj0" / "010.png")
    with pytest.raises(DatasetError, match=r"obj0: 23 images, expected 24 = 6 elevations x 4 views"):
        read_dataset(str(tmp_path), "hi3d", hi3d_views_per_ring=4)


def test_transforms_orbit_elevation_from_poses_and_bad_matrix(tmp_path):
    write_transforms_dataset(str(tmp_path), num_views=4, elevation=25.0, size=8)
    ring = read_dataset(str(tmp_path))[0].rings[0]
    assert ring.elevations_deg == pytest.approx([25.0] * 4) and ring.azimuths_deg == pytest.approx([0, 90, 180, 270])
    tj = json.loads((tmp_path / "transforms.json").read_text())
    tj["frames"][2]["transform_matrix"] = [[1, 0], [0, 1]]
    (tmp_path / "transforms.json").write_text(json.dumps(tj))
    with pytest.raises(DatasetError, match=r"transforms\.json: frames\[2\]\.transform_matrix is not a camera-to-world"):
        read_dataset(str(tmp_path))


def test_clip_roll_white_background_and_relative_azimuths(tmp_path):
    root = tmp_path / "d"
    write_svd_meta_dataset(str(root), num_objects=1, num_views=6, size=16)
    objs = read_dataset(str(root))
    ring = objs[0].rings[0]
    ds = OrbitClipDataset(objs, num_frames=3, resolution=16, seed=4)
    from sv3d.training.dataset import load_view

    views = torch.stack([load_view(p, 16) for p in ring.image_paths])
    starts = set()
    for pos in range(12):
        item = ds[pos]
        assert item["frames"].shape == (3, 3, 16, 16)
        assert item["azimuth_deg"].tolist() == pytest.approx([0.0, 60.0, 120.0])  # relative to the condition view
        start = [i for i in range(6) if torch.equal(views[i], item["frames"][0])]
        assert len(start) == 1
        starts.add(start[0])
        # a cyclic roll: the next views follow the condition view in ring order
        assert all(torch.equal(item["frames"][k], views[(start[0] + k) % 6]) for k in range(3))
        assert torch.equal(item["frames"], ds[pos]["frames"])  # keyed by position: the same clip every time
    assert len(starts) >= 3
    # transparent pixels are composited on white (1.0 in [-1, 1])
    assert torch.equal(ds[0]["frames"][:, :, 0, 0], torch.ones(3, 3))
    assert torch.equal(OrbitClipDataset(objs, 3, 16, random_roll=False)[0]["frames"], views[:3])
    with pytest.raises(DatasetError, match="fewer than num_frames=7"):
        OrbitClipDataset(objs, num_frames=7)
    os.remove(ring.image_paths[1])
    with pytest.raises(DatasetError, match=r"001\.png' does not exist"):
        OrbitClipDataset(objs, 3, 16, random_roll=False)[0]


def test_rank_batches_cover_the_global_batch():
    one = RankBatchSampler(4, 1, 0, 0, 3)
    two = [RankBatchSampler(2, 2, r, 0, 3) for r in range(2)]
    for step, (b1, (b20, b21)) in enumerate(zip(one, zip(*two))):
        assert b1 == b20 + b21 == list(range(4 * step, 4 * step + 4))
    assert list(RankBatchSampler(2, 2, 1, 2, 3)) == [[10, 11]]  # resumed at step 2
