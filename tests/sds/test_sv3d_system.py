"""SV3D image-to-3D: single-image data module, sv3d-system, and launch.py end to end with a tiny sv3d checkpoint."""
import glob
import importlib.util
import math
import os

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from threestudio.data.single_image import SingleImageDataModule, load_reference_image, orbit_camera_batch
from threestudio.utils.config import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, "configs", "sv3d-image-to-3d.yaml")
N = 21


@pytest.fixture(scope="module")
def assets(tmp_path_factory, sv3d_write_rgba):
    from sv3d.tiny import tiny_config, write_tiny_checkpoint

    root = tmp_path_factory.mktemp("sv3d_system")
    write_tiny_checkpoint(str(root / "sv3d_u.safetensors"), "sv3d_u", seed=3)
    OmegaConf.save(tiny_config("sv3d_u"), str(root / "sv3d_u.yaml"))
    return {"root": root, "image": sv3d_write_rgba(root / "object.png"), "ckpt": str(root / "sv3d_u.safetensors"),
            "yaml": str(root / "sv3d_u.yaml")}


# ----------------------------------------------------------------------------------------- data module
def test_reference_image_follows_sv3d_preprocessing(assets):
    from sv3d import preprocess_orbit_image

    rgb, mask = load_reference_image(assets["image"], 64)
    expected = np.asarray(preprocess_orbit_image(assets["image"], None, 64), dtype=np.float32) / 255
    assert torch.equal(rgb, torch.from_numpy(expected))
    # the 50x30 box is centred on the 96² canvas, scaled by 64/96: about 33 x 20 pixels of object
    inside = mask[..., 0] > 0.5
    assert abs(int(inside.sum()) - 33 * 20) < 60
    rows, cols = inside.nonzero(as_tuple=True)
    assert abs(rows.float().mean().item() - 32) < 1.5 and abs(cols.float().mean().item() - 32) < 1.5
    # white where there is no object; compositing identity rgb = c * a + (1 - a) holds for the red part
    assert torch.allclose(rgb[mask[..., 0] == 0], torch.ones(3), atol=1 / 255)
    # the middle of the red half, and of the blue half (LANCZOS rings a little near edges)
    red, blue = rgb[rows.min() + 6, 32], rgb[rows.max() - 6, 32]
    assert torch.allclose(red, torch.tensor([200, 60, 40]) / 255.0, atol=3 / 255)
    assert torch.allclose(blue, torch.tensor([30, 90, 220]) / 255.0, atol=3 / 255)
    assert mask[rows.min() + 6, 32, 0] == 1.0


def test_orbit_cameras_follow_the_sv3d_convention():
    batch = orbit_camera_batch(N, 10.0, 30.0, 2.0, 33.8, 8, 8)
    rel = torch.tensor([((i + 1) * 360.0 / N) % 360 for i in range(N)])
    assert torch.allclose(batch["azimuth_relative"], rel, atol=1e-4)
    assert batch["azimuth_relative"][-1] == 0
    e, a = math.radians(10.0), torch.deg2rad(rel + 30.0)
    expected = 2.0 * torch.stack([math.cos(e) * torch.cos(a), math.cos(e) * torch.sin(a),
                                  torch.full_like(a, math.sin(e))], dim=-1)
    assert torch.allclose(batch["camera_positions"], expected, atol=1e-5)
    # every camera looks at the origin: its -z axis points from the camera to the centre
    forward = -batch["c2w"][:, :3, 2]
    assert torch.allclose(forward, -expected / 2.0, atol=1e-5)
    gen = torch.Generator().manual_seed(0)
    jittered = orbit_camera_batch(N, 10.0, 0.0, 2.0, 33.8, 8, 8, jitter_deg=5.0, gen=gen)["azimuth_relative"]
    assert jittered[-1] == 0 and torch.all(jittered[:-1][1:] >= jittered[:-1][:-1])
    assert (jittered[:-1] - rel[:-1]).abs().max() <= 5.0 + 1e-4


def test_datamodule_batches(assets):
    dm = SingleImageDataModule({"image_path": assets["image"], "height": 12, "width": 10, "orbit_height": 8,
                                "orbit_width": 8, "orbit_azimuth_jitter_deg": 4.0, "n_val_views": 3})
    dm.setup("fit")
    batch = dm.train_dataset.batch_at(7)
    assert batch["rgb"].shape == (1, 12, 10, 3) and batch["mask"].shape == (1, 12, 10, 1)
    assert batch["rays_o"].shape == (1, 12, 10, 3)
    assert batch["orbit"]["rays_d"].shape == (N, 8, 8, 3)
    assert batch["elevation"].item() == 10.0 and batch["azimuth"].item() == 0.0
    # the jitter depends on the step only: a resumed data module repeats it
    again = SingleImageDataModule(dm.cfg.__dict__)
    again.load_state_dict({"global_step": 7})
    again.setup("fit")
    first = next(iter(again.train_dataset))
    assert torch.equal(first["orbit"]["azimuth"], batch["orbit"]["azimuth"])
    assert not torch.equal(dm.train_dataset.batch_at(8)["orbit"]["azimuth"], batch["orbit"]["azimuth"])
    assert [float(dm.val_dataset[i]["azimuth"][0]) for i in range(3)] == pytest.approx([0.0, 120.0, 240.0])


def test_datamodule_errors(assets, tmp_path):
    with pytest.raises(ConfigError, match="data.image_path"):
        SingleImageDataModule({})
    with pytest.raises(ConfigError, match="does not exist"):
        SingleImageDataModule({"image_path": str(tmp_path / "nope.png")})
    Image.new("RGB", (16, 16)).save(tmp_path / "rgb.png")
    with pytest.raises(ConfigError, match="RGBA"):
        SingleImageDataModule({"image_path": str(tmp_path / "rgb.png")})


# --------------------------------------------------------------------------------------------- system
def tiny_overrides(assets, root, tag, steps=4):
    return [
        f"exp_root_dir={root}", f"tag={tag}", "use_timestamp=false",
        f"data.image_path={assets['image']}", "data.height=12", "data.width=12", "data.orbit_height=8",
        "data.orbit_width=8", "data.eval_height=12", "data.eval_width=12", "data.n_val_views=2",
        "data.n_test_views=3",
        f"system.guidance.pretrained_model_name_or_path={assets['ckpt']}",
        f"system.guidance.original_config={assets['yaml']}",
        "system.guidance.image_size=32", "system.guidance.grad_frames=3", "system.guidance.vae_chunk_size=2",
        "system.geometry.pos_encoding_config.n_levels=2", "system.geometry.pos_encoding_config.log2_hashmap_size=10",
        "system.geometry.pos_encoding_config.base_resolution=8",
        "system.renderer.num_samples_per_ray=24", "system.renderer.occ_grid_resolution=8",
        "system.exporter.isosurface_resolution=16", "system.exporter.isosurface_threshold=auto",
        "system.exporter.texture_size=32", "system.exporter.decimate_target_faces=null",
        f"trainer.max_steps={steps}", "trainer.val_check_interval=2", "checkpoint.every_n_train_steps=2",
        "trainer.enable_progress_bar=false",
    ]


@pytest.fixture(scope="module")
def tiny_system(assets, tmp_path_factory):
    """An sv3d-system on the tiny checkpoint (SDS only: reference-view losses off) and its data module."""
    from threestudio.systems.sv3d_system import SV3DSystem
    from threestudio.utils.config import load_config

    root = tmp_path_factory.mktemp("sv3d_tiny_system")
    cfg = load_config(CONFIG, cli_args=tiny_overrides(assets, root, "grad") + [
        "system.loss.lambda_rgb=0", "system.loss.lambda_mask=0", "system.renderer.return_normal_perturb=true",
        "system.photometric_orbit_steps=2"])
    dm = SingleImageDataModule(cfg.data)
    dm.setup("fit")
    system = SV3DSystem(cfg.system)
    system.set_save_dir(str(root / "save"))
    return system, dm


def test_sds_gradients_reach_the_geometry(tiny_system):
    system, dm = tiny_system
    batch = dm.train_dataset.batch_at(0)
    system.on_train_batch_start(batch, 0)  # seeds the step and fills the occupancy grid
    loss = system.training_step(batch, 0)
    loss.backward()
    grids = [p.grad for p in system.geometry.encoding.parameters()]
    assert loss.item() > 0
    assert all(g is not None for g in grids) and sum(g.abs().sum() for g in grids) > 0
    assert system.geometry.feature_network.layers[0].weight.grad.abs().sum() > 0
    # nothing of the frozen prior is in the system's state (so never in checkpoints)
    assert not any(k.startswith("guidance") for k in system.state_dict())


def test_sampled_orbit_is_saved_once_and_read_back(tiny_system):
    system, _ = tiny_system
    frames, masks = system.load_or_sample_orbit()
    assert frames.shape == (N, 32, 32, 3) and masks.shape == (N, 32, 32, 1)
    files = glob.glob(os.path.join(system.get_save_dir(), "sv3d_orbit", "*.png"))
    assert len(files) == N
    again, again_masks = system.load_or_sample_orbit()  # read back from the PNGs: identical targets
    assert torch.equal(frames, again) and torch.equal(masks, again_masks)


def _launcher():
    spec = importlib.util.spec_from_file_location("launch", os.path.join(REPO, "launch.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def launch(*args):
    code = _launcher().main(list(args))
    assert code == 0, f"launch failed with exit code {code}"


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.slow
def test_launch_train_resume_test_export(assets, tmp_path):
    root = tmp_path / "runs"
    launch("--config", CONFIG, "--train", *tiny_overrides(assets, root, "full"))
    trial = root / "sv3d-image-to-3d" / "full"
    for rel in ("ckpts/last.ckpt", "ckpts/epoch=0-step=2.ckpt", "save/it2-0.png", "save/it4-1.png",
                "save/it4-test.mp4", "save/it4-test/2.png", "configs/parsed.yaml"):
        assert (trial / rel).exists(), rel
    ckpt = load(trial / "ckpts" / "last.ckpt")
    assert ckpt["global_step"] == 4
    assert ckpt["state_dict"] and not any(k.startswith("guidance") for k in ckpt["state_dict"])
    assert any(k.startswith("geometry.encoding") for k in ckpt["state_dict"])

    # stop after 2 steps, resume to 4: the same parameters as the uninterrupted run
    launch("--config", CONFIG, "--train", *tiny_overrides(assets, root, "part", steps=2))
    part = root / "sv3d-image-to-3d" / "part"
    launch("--config", str(part / "configs" / "parsed.yaml"), "--train", f"resume={part / 'ckpts' / 'last.ckpt'}",
           "trainer.max_steps=4", "trainer.enable_progress_bar=false")
    resumed = load(part / "ckpts" / "last.ckpt")
    assert resumed["global_step"] == 4
    for key, value in ckpt["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key

    parsed = str(trial / "configs" / "parsed.yaml")
    last = f"resume={trial / 'ckpts' / 'last.ckpt'}"
    os.remove(trial / "save" / "it4-test.mp4")
    # --test and --export never load the prior: a missing checkpoint file does not matter
    no_prior = "system.guidance.pretrained_model_name_or_path=/nonexistent/sv3d_u.safetensors"
    launch("--config", parsed, "--test", last, "trainer.enable_progress_bar=false", no_prior)
    assert (trial / "save" / "it4-test.mp4").exists()
    launch("--config", parsed, "--export", last, "trainer.enable_progress_bar=false", no_prior)
    exported = glob.glob(str(trial / "save" / "it4-export" / "*"))
    assert any(p.endswith(".obj") for p in exported) and any(p.endswith(".glb") for p in exported)


@pytest.mark.slow
def test_launch_with_photometric_orbit(assets, tmp_path):
    root = tmp_path / "runs"
    extra = ["system.photometric_orbit=true", "system.photometric_orbit_steps=2", "system.loss.lambda_orbit_rgb=10",
             "system.loss.lambda_orbit_mask=1", "system.guidance.grad_frames=0", "trainer.val_check_interval=10"]
    launch("--config", CONFIG, "--train", *tiny_overrides(assets, root, "photo", steps=1), *extra)
    trial = root / "sv3d-image-to-3d" / "photo"
    frames = sorted(glob.glob(str(trial / "save" / "sv3d_orbit" / "*.png")))
    assert len(frames) == N
    assert np.asarray(Image.open(frames[0])).shape == (32, 32, 3)
    import csv

    with open(glob.glob(str(trial / "csv_logs" / "version_0" / "metrics.csv"))[0]) as fp:
        rows = [r for r in csv.DictReader(fp) if r.get("train/loss_orbit_rgb")]
    assert rows and float(rows[0]["train/loss_orbit_rgb"]) > 0 and float(rows[0]["train/lambda_orbit_rgb"]) == 10
