"""`python -m hi3d.run` end to end (tiny, CPU) to a mesh, resuming, input handling and the seed's spellings."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import trimesh
from PIL import Image

from hi3d.preprocess import load_rgba, prepare_input
from hi3d.run import main

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
TINY_ARGS = ["--steps1", "1", "--steps2", "1", "--resolution1", "64", "--resolution2", "96", "--num-frames", "4",
             "--elevation", "10", "--device", "cpu"]
RECON = ["--recon-steps", "4"] + [x for o in (
    "data.height=24", "data.width=24", "data.batch_size=256", "data.n_test_views=2", "data.n_val_views=1",
    "trainer.val_check_interval=4", "system.geometry.pos_encoding_config.log2_hashmap_size=12",
    "system.renderer.num_samples_per_ray=32", "system.exporter.isosurface_resolution=32", "system.exporter.texture_size=64",
    "system.exporter.decimate_target_faces=1000", "trainer.enable_progress_bar=false") for x in ("--recon-override", o)]


def _env():
    env = dict(os.environ)
    paths = [os.path.join(REPO, "extensions", p) for p in ("hi3d", "sv3d", "mvdream")]
    env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.mark.slow
def test_run_end_to_end_to_a_mesh_and_resume(tiny_dir, rgba_image, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "hi3d.run", "--image", rgba_image, "--ckpt-dir", os.path.dirname(tiny_dir["stage1"]),
           "--out", str(out), *TINY_ARGS, *RECON]
    result = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    for s in (1, 2):
        d = out / f"stage{s}"
        assert len(os.listdir(d / "frames")) == 4 and os.path.getsize(d / "video.mp4") > 0
        tj = json.loads((d / "transforms.json").read_text())
        assert [f["azimuth_deg"] for f in tj["frames"]] == [0.0, 90.0, 180.0, 270.0]
        assert {f["elevation_deg"] for f in tj["frames"]} == {10.0}
    assert Image.open(out / "stage2" / "frames" / "000.png").size == (96, 96)
    done = json.loads((out / "stage3" / "done.json").read_text())
    mesh = trimesh.load(done["glb"], force="mesh")
    assert len(mesh.faces) > 50 and os.path.isfile(done["mesh"])
    assert done["orbit"].endswith("stage2")
    # resuming (in process: the same arguments): everything done with the same settings is skipped
    argv = cmd[3:]
    monkeypatch.setenv("PYTHONPATH", _env()["PYTHONPATH"])  # for the stage-3 subprocess, were it run
    assert main(argv) == 0
    assert capsys.readouterr().out.count("skipped") == 3
    # other settings for a finished stage: refused without --force
    assert main(argv[:-len(RECON)] + ["--stages", "1", "--seed", "5"]) == 2
    assert "--force" in capsys.readouterr().err


def test_seed_alias_v01_writes_the_reference_names(tiny_dir, rgba_image, tmp_path):
    out = tmp_path / "ref"
    cmd = [sys.executable, os.path.join(REPO, "extensions", "hi3d", "pipeline_i2v_eval_v01.py"), "--denoise_checkpoint",
           tiny_dir["stage1"], "--image_path", rgba_image, "--output_dir", str(out), "--elevation", "0",
           "--steps1", "1", "--resolution1", "64", "--num-frames", "2", "--device", "cpu"]
    result = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("first_step/first.mp4", "temp_image/rgba.png", "temp_image/white.png", "stage1/done.json"):
        assert os.path.isfile(out / name), name


def test_run_errors_before_any_work(tmp_path, rgba_image, capsys):
    assert main(["--image", str(tmp_path / "none.png"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["--image", rgba_image, "--out", str(tmp_path / "o"), "--ckpt-dir", str(tmp_path)]) == 2
    assert "first_stage.pt" in capsys.readouterr().err
    assert main(["--image", rgba_image, "--out", str(tmp_path / "o"), "--stages", "1,4"]) == 2
    assert not os.path.exists(tmp_path / "o")


def test_input_rgba_mask_plain_background_or_refusal(tmp_path, rgba_image):
    rgba, square, x = prepare_input(rgba_image, 64)
    assert square.size == (64, 64) and x.shape == (1, 3, 64, 64)
    assert np.asarray(square)[0, 0].tolist() == [255, 255, 255]  # composited on white
    rgb = np.full((50, 60, 3), (30, 90, 200), np.uint8)
    rgb[10:40, 20:40] = (250, 200, 10)
    plain = tmp_path / "plain.png"
    Image.fromarray(rgb).save(plain)
    alpha = np.asarray(load_rgba(str(plain)))[..., 3]
    assert alpha[25, 30] == 255 and alpha[0, 0] == 0 and (alpha > 0).sum() == 30 * 20
    mask = np.zeros((50, 60), np.uint8)
    mask[5:15, 5:15] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    assert (np.asarray(load_rgba(str(plain), str(tmp_path / "mask.png")))[..., 3] > 0).sum() == 100
    noisy = np.random.default_rng(0).integers(0, 255, (50, 60, 3), dtype=np.uint8)
    Image.fromarray(noisy).save(tmp_path / "photo.png")
    with pytest.raises(ValueError, match="RGBA image.*--mask"):
        load_rgba(str(tmp_path / "photo.png"))


def test_stage3_commands_for_reconstruction_and_refinement(tmp_path):
    from hi3d.stage3 import find_launch, reconstruction_command

    launch = find_launch()
    coarse = reconstruction_command(str(tmp_path / "orbit"), str(tmp_path / "s3"), launch, steps=7, elevation_deg=10)
    assert coarse[2:4] == ["--config", os.path.join(REPO, "configs", "reconstruction-example.yaml")]
    assert "data.key_background=white" in coarse and "tag=mesh" in coarse and "trainer.max_steps=7" in coarse
    refine = reconstruction_command(str(tmp_path / "orbit"), str(tmp_path / "s3"), launch, refine_from=str(tmp_path / "last.ckpt"))
    assert refine[3] == os.path.join(REPO, "configs", "reconstruction-refine.yaml")
    assert f"system.geometry_convert_from={tmp_path / 'last.ckpt'}" in refine and "tag=refined" in refine
    with pytest.raises(FileNotFoundError, match="--launch"):
        find_launch(str(tmp_path / "nope.py"))
