"""Command lines end to end on tiny checkpoints: frames, mp4 and transforms.json."""

import json
import os
import importlib.util

import imageio
import numpy as np
import pytest

from sv3d.cameras import orbit_c2w
from sv3d.sample import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_sample_cli_writes_orbit_video_and_cameras(tiny_ckpts, rgba_object, tmp_path):
    out = tmp_path / "orbit"
    rc = main(["--version", "sv3d_p", "--checkpoint", tiny_ckpts["sv3d_p"], "--image", rgba_object,
               "--num_frames", "4", "--steps", "2", "--seed", "3", "--image_size", "64", "--decoding_t", "3",
               "--elevation", "5", "10", "15", "20", "--output_dir", str(out), "--device", "cpu"])
    assert rc == 0
    frames = sorted(os.listdir(out / "frames"))
    assert frames == ["000.png", "001.png", "002.png", "003.png"]
    assert imageio.imread(out / "frames" / "000.png").shape == (64, 64, 3)
    video = imageio.mimread(out / "video.mp4")
    assert len(video) == 4 and video[0].shape[:2] == (64, 64)
    # the last frame is the (preprocessed) input view
    assert np.array_equal(imageio.imread(out / "frames" / "003.png"), imageio.imread(out / "input.png"))
    tj = json.loads((out / "transforms.json").read_text())
    assert tj["camera_angle_x"] > 0 and (tj["w"], tj["h"]) == (64, 64)
    assert [f["file_path"] for f in tj["frames"]] == [f"frames/{n}" for n in frames]
    az = [f["azimuth_deg"] for f in tj["frames"]]
    el = [f["elevation_deg"] for f in tj["frames"]]
    assert az == pytest.approx([90.0, 180.0, 270.0, 0.0]) and el == [5.0, 10.0, 15.0, 20.0]
    expect = orbit_c2w(el, az)
    assert np.allclose(np.array([f["transform_matrix"] for f in tj["frames"]]), expect)


def _load_alias():
    spec = importlib.util.spec_from_file_location("sv3d_simple_video_sample", os.path.join(ROOT, "simple_video_sample.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_simple_video_sample_alias(tiny_ckpts, rgba_object, tmp_path, monkeypatch, capsys):
    alias = _load_alias()
    monkeypatch.chdir(ROOT)  # the seed's relative spelling: configs/sv3d_u.yaml
    argv = alias.translate(["--config", "configs/sv3d_u.yaml", "--ckpt", tiny_ckpts["sv3d_u"], "--image", rgba_object,
                            "--num_frames", "2", "--num_steps", "1", "--output_folder", str(tmp_path / "o"),
                            "--device", "cpu", "--image_size", "64", "--decoding_t", "2"])
    assert argv[:4] == ["--version", "sv3d_u", "--config", "configs/sv3d_u.yaml"]
    assert main(argv) == 0
    assert "sv3d_u: wrote 2 frames" in capsys.readouterr().out
    assert len(json.loads((tmp_path / "o" / "transforms.json").read_text())["frames"]) == 2
    with pytest.raises(SystemExit, match="cannot tell the version"):
        alias.translate(["--config", "my.yaml", "--ckpt", "x", "--image", "y"])


def test_cli_reports_missing_checkpoint(tmp_path, rgba_object, capsys):
    rc = main(["--checkpoint", str(tmp_path / "missing.safetensors"), "--image", rgba_object, "--output_dir", str(tmp_path)])
    assert rc == 2
    assert "does not exist" in capsys.readouterr().err
