"""Command lines end to end on tiny checkpoints: the documented layout, cameras, torchrun, bad inputs."""

import importlib.util
import json
import math
import os
import subprocess
import sys

import imageio
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from sv3d import image_to_tensor, orbit_c2w, preprocess_orbit_image

from diffusion2.outputs import write_preview
from diffusion2.sample import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--num_views", "5", "--num_frames", "4", "--num_steps", "1", "--vrs_steps", "1", "--image_size", "64",
        "--decoding_t", "4", "--device", "cpu", "--no_progress", "--save_latents", "--seed", "7"]


def _args(ckpts, inp, out, *extra):
    return ["--input_path", inp, "--sv3d", ckpts["sv3d"], "--svd", ckpts["svd"], "--out", str(out), *TINY, *extra]


@pytest.fixture(scope="module")
def image_run(tiny_ckpts, rgba_image, tmp_path_factory):
    out = tmp_path_factory.mktemp("d2_image_run") / "out"
    torch.set_num_threads(1)
    assert main(_args(tiny_ckpts, rgba_image, out)) == 0
    return out


@pytest.mark.slow
def test_image_input_writes_the_documented_layout(image_run, rgba_image):
    out = image_run
    views = sorted(d for d in os.listdir(out) if d.startswith("view_"))
    assert views == [f"view_{v:02d}" for v in range(5)]
    for v in views:
        assert sorted(os.listdir(out / v)) == ["frame_00.png", "frame_01.png", "frame_02.png", "frame_03.png", "frame_all.mp4"]
        assert imageio.imread(out / v / "frame_00.png").shape == (64, 64, 3)
    for name, n in (("ref_multiview.mp4", 5), ("ref_video.mp4", 4), ("preview.mp4", 4), ("view_02/frame_all.mp4", 4)):
        assert len(imageio.mimread(out / name)) == n, name
    saved = load_file(str(out / "latents.safetensors"))
    assert saved["latents"].shape == (5, 4, 4, 8, 8) and torch.isfinite(saved["latents"]).all()
    # the orbit's last view is the (preprocessed) input image itself
    assert torch.equal(saved["orbit"][-1:], image_to_tensor(preprocess_orbit_image(rgba_image, None, 64)))
    az = [72.0, 144.0, 216.0, 288.0, 0.0]
    for t in range(4):
        tj = json.loads((out / f"transforms_frame_{t:02d}.json").read_text())
        assert tj["frame_index"] == t and tj["time"] == pytest.approx(t / 3)
        assert tj["camera_angle_x"] == pytest.approx(math.radians(33.8)) and (tj["w"], tj["h"]) == (64, 64)
        assert [f["file_path"] for f in tj["frames"]] == [f"view_{v:02d}/frame_{t:02d}.png" for v in range(5)]
        assert all(os.path.isfile(out / f["file_path"]) for f in tj["frames"])
        c2w = np.array([f["transform_matrix"] for f in tj["frames"]])
        assert np.allclose(c2w, orbit_c2w([10.0] * 5, az, 2.0))
        assert np.allclose(c2w[-1][:3, 3], [2 * math.cos(math.radians(10)), 0, 2 * math.sin(math.radians(10))])


def test_preview_sweeps_the_views_while_time_runs(tmp_path):
    """preview frame t is view min(t, V - 1)'s frame t (written frames of distinct flat colours)."""
    for v in range(3):
        os.makedirs(tmp_path / f"view_{v:02d}")
        for t in range(5):
            imageio.imwrite(tmp_path / f"view_{v:02d}" / f"frame_{t:02d}.png", np.full((16, 16, 3), 40 * v + 8 * t, np.uint8))
    frames = imageio.mimread(write_preview(str(tmp_path), 3, 5, fps=6))
    means = [float(f.mean()) for f in frames]
    assert means == pytest.approx([40 * min(t, 2) + 8 * t for t in range(5)], abs=2.0)


@pytest.mark.slow
def test_torchrun_two_processes_equal_one(tiny_ckpts, rgba_image, image_run, tmp_path):
    out = tmp_path / "two"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [os.path.join(ROOT, ".."), *(os.path.join(ROOT, "..", p) for p in ("sv3d", "diffusion2")), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "diffusion2.sample", *_args(tiny_ckpts, rgba_image, out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "on 2 rank(s)" in proc.stdout
    one = load_file(str(image_run / "latents.safetensors"))
    two = load_file(str(out / "latents.safetensors"))
    for key in ("orbit", "video"):
        assert torch.equal(one[key], two[key]), key
    torch.testing.assert_close(two["latents"], one["latents"], atol=1e-5, rtol=1e-6)
    for v in range(5):  # rank 0 wrote views 0-1, rank 1 views 2-4
        for t in range(4):
            a = imageio.imread(image_run / f"view_{v:02d}" / f"frame_{t:02d}.png").astype(int)
            b = imageio.imread(out / f"view_{v:02d}" / f"frame_{t:02d}.png").astype(int)
            assert np.abs(a - b).max() <= 1
    assert json.loads((out / "sample_args.json").read_text())["world_size"] == 2


@pytest.mark.slow
def test_folder_input_is_the_reference_video(tiny_ckpts, video_folder, tmp_path, capsys):
    from diffusion2.sample import build_parser, run

    out = tmp_path / "video"
    args = build_parser().parse_args(_args(tiny_ckpts, video_folder, out)[:-2])  # no --seed: default 23
    res = run(args)
    assert res["config"].num_frames == 3
    video = res["result"].video
    frames = [np.asarray(Image.open(os.path.join(video_folder, f"{t}.png")).convert("RGBA").resize((64, 64), Image.LANCZOS)) / 255.0 for t in range(3)]
    expect = torch.tensor(np.stack([f[..., :3] * f[..., 3:] + 1 - f[..., 3:] for f in frames]), dtype=torch.float32)
    assert torch.allclose((video.permute(0, 2, 3, 1) + 1) / 2, expect, atol=1 / 255 + 1e-6)  # whole frames, not recentred
    # the orbit's condition is the *last* frame
    assert torch.equal(res["result"].orbit[-1], video[-1])
    assert sorted(os.listdir(out / "view_04")) == ["frame_00.png", "frame_01.png", "frame_02.png", "frame_all.mp4"]
    assert json.loads((out / "transforms_frame_02.json").read_text())["time"] == 1.0
    printed = capsys.readouterr().out
    assert "Diffusion² plan: 5 views x 3 frames of 4x8x8 latents on 1 rank(s) (cpu), 2 joint evaluations" in printed
    assert "5 UNet calls per evaluation" in printed  # 2 chunks of columns + 3 chunks of rows at chunk 2
    plan = res["result"].plan
    assert plan.calls_per_evaluation == 5 and plan.seconds_per_evaluation > 0 and plan.weight_bytes > 0
    assert printed.index("Diffusion² plan") < printed.index("Diffusion²: wrote")


def _error(argv, capsys):
    assert main(argv) == 2
    return capsys.readouterr().err


def test_bad_inputs_fail_before_any_work(tiny_ckpts, rgba_image, tmp_path, capsys):
    missing = {"sv3d": str(tmp_path / "no_sv3d_p.safetensors"), "svd": str(tmp_path / "no_svd.safetensors")}
    # non-square frames without a frame ratio (checked before the checkpoints are even looked at)
    wide = tmp_path / "wide"
    wide.mkdir()
    for t in range(2):
        Image.new("RGBA", (80, 60), (255, 0, 0, 255)).save(wide / f"{t}.png")
    err = _error(_args(missing, str(wide), tmp_path / "o"), capsys)
    assert "1.png" in err or "0.png" in err
    assert "not square" in err and "--image_frame_ratio" in err
    # more than 25 frames
    many = tmp_path / "many"
    many.mkdir()
    for t in range(26):
        Image.new("RGBA", (16, 16), (255, 0, 0, 255)).save(many / f"{t}.png")
    assert "holds 26 frames; SVD-xt takes at most 25" in _error(_args(missing, str(many), tmp_path / "o"), capsys)
    # frames not named by their index
    (many / "cover.png").write_bytes((many / "0.png").read_bytes())
    assert "named by their index" in _error(_args(missing, str(many), tmp_path / "o"), capsys)
    # missing checkpoint
    err = _error(_args({"sv3d": missing["sv3d"], "svd": tiny_ckpts["svd"]}, rgba_image, tmp_path / "o"), capsys)
    assert "--sv3d checkpoint" in err and "no_sv3d_p.safetensors" in err and "does not exist" in err
    # nothing the user made is overwritten
    done = tmp_path / "done"
    (done / "view_00").mkdir(parents=True)
    assert "already holds a Diffusion² result" in _error(_args(tiny_ckpts, rgba_image, done), capsys)
    assert "input_path" in _error(_args(tiny_ckpts, str(tmp_path / "nothing.png"), tmp_path / "o"), capsys)
    assert "give 1 elevation or 5" in _error(_args(tiny_ckpts, rgba_image, tmp_path / "o", "--elevations_deg", "1", "2"), capsys)


def _alias():
    spec = importlib.util.spec_from_file_location("diffusion2_main_alias", os.path.join(ROOT, "main.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_seed_spelling_alias(tmp_path, monkeypatch, rgba_image, capsys):
    alias = _alias()
    argv = alias.translate(["--input_path", "data/csm_luigi_rgba.png", "--elevations_deg", "0.0", "--image_frame_ratio", "0.9",
                            "--chunk", "4"])
    assert argv[argv.index("--sv3d") + 1] == os.path.join("checkpoints", "sv3d_p.safetensors")
    assert argv[argv.index("--svd") + 1] == os.path.join("checkpoints", "svd_xt.safetensors")
    assert argv[argv.index("--out") + 1] == os.path.join("output", "csm_luigi_rgba", "default_seed_0000023")
    assert argv[argv.index("--elevations_deg") + 1] == "0.0" and argv[argv.index("--image_frame_ratio") + 1] == "0.9"
    assert argv[-2:] == ["--chunk", "4"]  # diffusion2.sample flags pass through
    listed = alias.translate(["--input_path", "x.png", "--elevations_deg", "[0, 5]", "--sv3d_scale_schedule", "cosine"])
    assert listed[listed.index("--elevations_deg") + 1 : listed.index("--elevations_deg") + 3] == ["0.0", "5.0"]
    with pytest.raises(SystemExit, match="not implemented"):
        alias.translate(["--input_path", "x.png", "--conv_blend", "True"])
    # from extensions/diffusion2 without checkpoints/: a clear error naming the expected file
    monkeypatch.chdir(tmp_path)
    assert main(alias.translate(["--input_path", rgba_image, "--image_frame_ratio", "0.9"])) == 2
    assert os.path.join("checkpoints", "sv3d_p.safetensors") in capsys.readouterr().err
