"""Unreadable images, corrupt safetensors and impossible step counts in the model packages' entry points."""
import os

import pytest

from conftest import snapshot


@pytest.fixture
def bad_files(tmp_path):
    from safetensors.torch import save_file
    import torch

    good = tmp_path / "good.safetensors"
    save_file({"w": torch.zeros(64, 64)}, str(good))
    data = good.read_bytes()
    files = {
        "truncated.safetensors": data[: len(data) // 2],
        "random.safetensors": os.urandom(2048),
        "empty.safetensors": b"",
        "image.png": b"this is not a png",
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    return tmp_path


@pytest.mark.parametrize("name,message", [
    ("truncated.safetensors", "probably truncated or corrupt"),
    ("random.safetensors", "probably truncated or corrupt"),
    ("empty.safetensors", "is empty (0 bytes)"),
])
def test_sv3d_corrupt_checkpoint_is_a_clear_error(bad_files, name, message):
    """Before: safetensors' own exception (read outside the try) with a traceback."""
    from sv3d import SV3DPipeline
    from sv3d.checkpoint import load_checkpoint

    path = str(bad_files / name)
    before = snapshot(bad_files)
    for loader in (load_checkpoint, SV3DPipeline.from_single_file):
        with pytest.raises(ValueError) as info:
            loader(path)
        assert path in str(info.value) and message in str(info.value)
    assert snapshot(bad_files) == before


def test_sv3d_sample_refuses_bad_inputs_before_loading(bad_files, capsys):
    """Before: an unreadable --image crashed with PIL's UnidentifiedImageError after the model had loaded."""
    from sv3d.sample import main

    out = bad_files / "out"
    before = snapshot(bad_files)
    cases = [
        (["--checkpoint", str(bad_files / "good.safetensors"), "--image", str(bad_files / "image.png")],
         "is not a readable image"),
        (["--checkpoint", str(bad_files / "random.safetensors"), "--image", str(bad_files / "missing.png")],
         "does not exist"),
        (["--checkpoint", str(bad_files / "good.safetensors"), "--image", str(bad_files / "image.png"), "--steps", "0"],
         "--steps must be at least 1, got 0"),
        (["--checkpoint", str(bad_files / "good.safetensors"), "--image", str(bad_files / "image.png"),
          "--image_size", "100"], "--image_size must be a positive multiple of 8"),
    ]
    for args, message in cases:
        assert main([*args, "--output_dir", str(out)]) == 2
        assert message in capsys.readouterr().err
    assert not out.exists() and snapshot(bad_files) == before


def test_sv3d_pipeline_names_an_unreadable_image(bad_files):
    from sv3d.preprocess import preprocess_orbit_image, preprocess_video_image

    for fn in (preprocess_orbit_image, preprocess_video_image):
        with pytest.raises(ValueError, match="image.png' is not a readable image"):
            fn(str(bad_files / "image.png"))


def test_single_image_data_names_an_unreadable_image(bad_files):
    from threestudio.data.single_image import SingleImageDataModule
    from threestudio.utils.config import ConfigError

    with pytest.raises(ConfigError, match=r"data.image_path: '.*image.png' is not a readable image"):
        SingleImageDataModule({"image_path": str(bad_files / "image.png")})


@pytest.mark.parametrize("args,message", [
    (["--steps", "0"], "--steps must be at least 1, got 0"),
    (["--num_frames", "0"], "--num_frames must be at least 1, got 0"),
    (["--size", "100"], "--size must be a multiple of 8"),
    (["--guidance_scale", "nan"], "--guidance_scale must be a finite number"),
])
def test_mvdream_t2i_refuses_bad_arguments_before_loading(tmp_path, capsys, args, message):
    """Before: --steps 0 loaded the model, then crashed inside the scheduler."""
    from mvdream.t2i import main

    out = tmp_path / "samples"
    assert main(["--checkpoint", str(tmp_path / "never-read.pt"), "--output_dir", str(out), *args]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_mvdream_random_bytes_are_corruption_not_pickles(bad_files):
    """Before: any weights-only failure, random bytes included, was reported as "pickled Python objects"."""
    from mvdream import MVDreamPipeline

    path = bad_files / "random.pt"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(ValueError) as info:
        MVDreamPipeline.from_single_file(str(path))
    assert "probably truncated or corrupt" in str(info.value) and "pickled" not in str(info.value)
