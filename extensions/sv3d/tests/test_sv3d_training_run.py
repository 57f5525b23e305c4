"""Training runs end to end on tiny random models (CPU): overfitting, exact resume, 1 vs 2 processes, the export."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from sv3d import SV3DPipeline
from sv3d.training import get_recipe, load_config
from sv3d.training.dataset import OrbitClipDataset
from sv3d.training.data_readers import read_dataset
from sv3d.training.loss import edm_training_loss
from sv3d.training.models import load_source_models
from sv3d.training.recipes import FrozenEncoders

SV3D_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(os.path.dirname(SV3D_ROOT))


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    paths = [os.path.join(REPO, "extensions", "sv3d"), os.path.join(REPO, "extensions", "mvdream")]
    env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")])
    return env


def _run(overrides):
    """One in-process run (accelerate's singleton state reset first)."""
    from accelerate.state import AcceleratorState

    from sv3d.training.trainer import train

    AcceleratorState._reset_state(True)
    return train(load_config(None, overrides))


def _args(src, data, out, **kw):
    base = dict(pretrained=src, output_dir=out, **{"data.root": data, "data.resolution": 32, "data.num_frames": 3},
                batch_size=2, max_steps=2, gradient_checkpointing=False, progress_bar=False, tensorboard=False,
                checkpoint_every_n_steps=0, **{"optim.warmup_steps": 1, "optim.learning_rate": 1e-3})
    base.update(kw)
    return [f"{k}={v}" for k, v in base.items()]


@torch.no_grad()
def _eval_loss(unet, src, root):
    """Loss of `unet` on the object's clips at fixed sigmas and noise (conditioning kept)."""
    ds = OrbitClipDataset(read_dataset(root)[:1], 3, 32, seed=0, random_roll=False, shuffle=False)
    batch = {k: (v[None] if isinstance(v, torch.Tensor) else v) for k, v in ds[0].items()}
    recipe = get_recipe("svd_mv")
    g = torch.Generator().manual_seed(7)
    cond = recipe.conditioning(batch, FrozenEncoders(src.vae, src.image_encoder), torch.tensor([0.05]), torch.randn(1, 3, 32, 32, generator=g))
    total = 0.0
    for s in (0.3, 1.0, 3.0):
        noise = torch.randn(cond.latents.shape, generator=g)
        total += float(edm_training_loss(unet, cond.latents, torch.tensor([s]), noise, cond.concat, cond.context, cond.added_time_ids, "edm"))
    return total / 3


@pytest.mark.slow
def test_short_run_overfits_one_object_and_exports(tiny_svd_xt, dummy_orbits, tmp_path, rgba_object):
    out = str(tmp_path / "run")
    res = _run(_args(tiny_svd_xt, dummy_orbits, out, max_steps=12, **{"data.max_objects": 1, "optim.learning_rate": 5e-3,
                                                               "loss.weighting": "edm"}))
    src = load_source_models(tiny_svd_xt, get_recipe("svd_mv"), seed=0)
    before = _eval_loss(src.unet, src, dummy_orbits)
    pipe = SV3DPipeline.from_single_file(res.export["single_file"])
    after = _eval_loss(pipe.unet, src, dummy_orbits)
    assert after < 0.7 * before, (before, after)  # measured: 0.62 -> 0.38
    assert len(res.losses) == 12 and all(torch.isfinite(torch.tensor(res.losses)))
    logged = [json.loads(line) for line in open(os.path.join(out, "train_log.jsonl"))]
    assert [r["step"] for r in logged] == list(range(1, 13)) and {"train/lr", "train/log_sigma_mean"} <= set(logged[0])
    # the exported single file samples through the CLI of the package
    from sv3d.sample import main as sample_main

    rc = sample_main(["--version", "svd_mv", "--checkpoint", res.export["single_file"], "--image", rgba_object, "--elevation", "20",
                      "--num_frames", "3", "--steps", "2", "--image_size", "32", "--output_dir", str(tmp_path / "s"), "--device", "cpu"])
    assert rc == 0 and sorted(os.listdir(tmp_path / "s" / "frames")) == ["000.png", "001.png", "002.png"]


@pytest.mark.slow
def test_stopped_and_resumed_run_equals_uninterrupted(tiny_svd_xt, dummy_orbits, tmp_path):
    common = {"checkpoint_every_n_steps": 2, "loss.cfg_mode": "sample", "loss.cfg_rate": 0.5, "ema.enabled": True, "ema.decay": 0.9,
              "optim.warmup_steps": 0}
    full = _run(_args(tiny_svd_xt, dummy_orbits, str(tmp_path / "a"), max_steps=3, **common))
    _run(_args(tiny_svd_xt, dummy_orbits, str(tmp_path / "b"), max_steps=2, **common))
    with pytest.raises(FileExistsError, match="resume=latest"):
        _run(_args(tiny_svd_xt, dummy_orbits, str(tmp_path / "b"), max_steps=3, **common))
    resumed = _run(_args(tiny_svd_xt, dummy_orbits, str(tmp_path / "b"), max_steps=3, resume="latest", **common))
    assert resumed.losses == full.losses[2:]
    a, b = load_file(full.export["single_file"]), load_file(resumed.export["single_file"])
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)  # EMA weights, bit for bit
    ra = load_file(str(tmp_path / "a" / "checkpoints" / "step_0000003" / "model.safetensors"))
    rb = load_file(str(tmp_path / "b" / "checkpoints" / "step_0000003" / "model.safetensors"))
    assert all(torch.equal(ra[k], rb[k]) for k in ra)  # raw weights too


@pytest.mark.slow
def test_two_processes_equal_one_process_with_the_same_global_batch(tiny_svd_xt, dummy_orbits, tmp_path):
    """gloo on CPU: 2 processes x batch 1 vs 1 process x batch 2, 2 AdamW steps at lr 1e-4.

    Tolerance: logged losses rel 1e-5, weights atol 2e-6 (an Adam step moves a weight by up to 1e-4). Adam's eps is raised to
    1e-4 in both runs: biases in front of a GroupNorm have a mathematically zero gradient, and with eps 1e-8 Adam
    turns the float round-off of their gradient (which differs between a batch of 2 and two batches of 1) into
    full +-lr steps."""
    extra = {"optim.eps": 1e-4, "optim.learning_rate": 1e-4}
    one = _run(_args(tiny_svd_xt, dummy_orbits, str(tmp_path / "one"), **extra))
    out2 = str(tmp_path / "two")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           os.path.join(SV3D_ROOT, "accelerate_config", "cpu_multi_process.yaml"), "--num_processes", "2",
           "--main_process_port", "0", "-m", "sv3d.train"] + _args(tiny_svd_xt, dummy_orbits, out2, batch_size=1, **extra)
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout + proc.stderr
    two_losses = [json.loads(line)["train/loss"] for line in open(os.path.join(out2, "train_log.jsonl"))]
    assert two_losses == pytest.approx(one.losses, rel=1e-5)
    a = load_file(one.export["single_file"])
    b = load_file(os.path.join(out2, "export", "step_0000002", "model.safetensors"))
    src = load_file(tiny_svd_xt)
    moved = max(float((a[k] - src[k]).abs().max()) for k in a if k in src and src[k].shape == a[k].shape)
    assert moved > 5e-5  # the runs did train (step 1 is the warm-up step at lr 0)
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    print(f"max |1-process - 2-process| weight difference: {diff:.3g}")
    assert diff < 2e-6


@pytest.mark.slow
def test_sv3d_p_from_svd_xt_with_validation_and_export(tiny_svd_xt, tmp_path):
    """SV3D_p fine-tuned from SVD-xt (embedding surgery) on a transforms.json orbit: validation orbits are written,
    and the exported file (SVD-xt's temporal first stage, described by model.yaml) samples posed orbits."""
    from sv3d.training.dummy_data import write_transforms_dataset

    data = write_transforms_dataset(str(tmp_path / "orbit"), num_views=6, elevation=15.0, size=32)
    res = _run(_args(tiny_svd_xt, data, str(tmp_path / "p"), recipe="sv3d_p", max_steps=1, **{
        "validation.root": data, "validation.num_steps": 2, "validation.num_objects": 1}))
    assert [sorted(os.listdir(os.path.dirname(v["grid"]))) for v in res.validation] == [["00.mp4", "00_grid.png"]]
    from PIL import Image

    assert Image.open(res.validation[0]["grid"]).size == (32 * 4, 64)  # input + 3 views, generated over ground truth
    pipe = SV3DPipeline.from_single_file(res.export["single_file"], original_config=res.export["config"])
    assert pipe.spec.family == "sv3d_p" and pipe.spec.first_stage == "temporal" and pipe.load_report.unexpected == []
    out = pipe(os.path.join(data, "images", "000.png"), num_frames=3, num_steps=2, elevations_deg=[10.0, 20.0, 15.0], image_size=32)
    assert out.frames.shape == (3, 3, 32, 32) and out.azimuths_deg[-1] == 0.0
