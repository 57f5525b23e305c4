"""`python -m threestudio.evaluate`: PSNR / SSIM of a finished tiny reconstruction trial on held-out views, CLIP score
and R-precision of a text-to-3D trial with a tiny random CLIP, metrics.json and the contact sheet."""
import csv
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY_RECONSTRUCTION = [
    "tag=tiny", "use_timestamp=false", "data.height=32", "data.width=32", "data.batch_size=512",
    "data.n_test_views=2", "data.n_val_views=1", "trainer.max_steps=6", "trainer.val_check_interval=6",
    "checkpoint.every_n_train_steps=1000", "system.geometry.pos_encoding_config.log2_hashmap_size=14",
    "system.renderer.num_samples_per_ray=64", "system.export_after_test=false", "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",
]


@pytest.fixture(scope="module")
def finished_trial(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_runs")
    proc = subprocess.run([sys.executable, "launch.py", "--config", "configs/reconstruction-example.yaml", "--train",
                           f"exp_root_dir={root}", *TINY_RECONSTRUCTION], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "reconstruction-example" / "tiny"


@pytest.mark.slow
def test_evaluate_a_finished_reconstruction_trial(finished_trial):
    proc = subprocess.run([sys.executable, "-m", "threestudio.evaluate", str(finished_trial)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = finished_trial / "eval" / "it6"
    metrics = json.loads((out / "metrics.json").read_text())
    n_test = len(json.load(open(os.path.join(REPO, "load", "example_primitives", "transforms_test.json")))["frames"])
    assert metrics["held_out_views"] == n_test == len(metrics["views"])
    assert metrics["step"] == 6 and metrics["split"] == "test" and metrics["lpips"] is None
    assert metrics["psnr"] == pytest.approx(np.mean([v["psnr"] for v in metrics["views"]]))
    assert 0 < metrics["ssim"] < 1 and 3 < metrics["psnr"] < 40
    assert json.loads(proc.stdout)["psnr"] == pytest.approx(metrics["psnr"])
    sheet = np.asarray(Image.open(out / "contact_sheet.png"))
    assert sheet.shape == (min(n_test, 8) * (32 + 2), 3 * 32 + 2 * 2, 3)


@pytest.mark.slow
def test_evaluate_equals_the_runs_own_validation_psnr(finished_trial):
    """The validation view scored by evaluate equals the val/psnr the run logged for the same weights."""
    from threestudio.evaluate import evaluate

    metrics = evaluate(str(finished_trial), split="val")
    with open(glob.glob(str(finished_trial / "csv_logs" / "version_*" / "metrics.csv"))[0]) as fp:
        logged = [float(r["val/psnr"]) for r in csv.DictReader(fp) if r.get("val/psnr")]
    assert metrics["views"][0]["psnr"] == pytest.approx(logged[-1], abs=1e-4)


def test_evaluate_refuses_a_folder_that_is_not_a_trial(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "threestudio.evaluate", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "has no configs/parsed.yaml" in proc.stderr


def tiny_clip(folder):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from mvdream.tokenizer import load_clip_tokenizer

    config = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    torch.manual_seed(0)
    model = CLIPModel(config).eval()
    model.save_pretrained(folder)
    tokenizer = load_clip_tokenizer()
    tokenizer.pad_token = tokenizer.eos_token
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                 crop_size={"height": 32, "width": 32}),
                              tokenizer=tokenizer)
    processor.save_pretrained(folder)
    return model, processor


def test_clip_score_and_r_precision_of_a_text_trial(tmp_path):
    from threestudio.evaluate import evaluate

    model, processor = tiny_clip(tmp_path / "clip")
    trial = tmp_path / "trial"
    (trial / "configs").mkdir(parents=True)
    (trial / "ckpts").mkdir()
    (trial / "ckpts" / "last.ckpt").write_bytes(b"")
    (trial / "configs" / "parsed.yaml").write_text(
        "system_type: mvdream-system\nsystem:\n  prompt_processor:\n    prompt: a red cube\n  test_panels: [rgb, opacity]\n")
    rng = np.random.default_rng(0)
    renders = []
    (trial / "save" / "it3-test").mkdir(parents=True)
    for i in range(5):
        rgb = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
        renders.append(rgb)
        panel = np.concatenate([rgb, np.full_like(rgb, 255)], axis=1)  # the rgb panel, then an opacity panel
        Image.fromarray(panel).save(trial / "save" / "it3-test" / f"{i}.png")
    distractors = ["a blue sphere", "a green cone", "a tree"]
    metrics = evaluate(str(trial), clip=str(tmp_path / "clip"), distractors=distractors)
    # oracle: CLIPModel's own forward (logits = scale x cosine)
    texts = ["a red cube"] + distractors
    inputs = processor(text=texts, images=renders, return_tensors="pt", padding=True)
    with torch.no_grad():
        cos = model(**inputs).logits_per_image / model.logit_scale.exp()
    assert metrics["clip_score"] == pytest.approx(float((100 * cos[:, 0].clamp_min(0)).mean()), abs=1e-3)
    assert metrics["r_precision"] == pytest.approx(float((cos.argmax(1) == 0).float().mean()))
    assert metrics["n_distractors"] == 3 and metrics["step"] == 3
    sheet = np.asarray(Image.open(trial / "eval" / "it3" / "contact_sheet.png"))
    assert sheet.shape == (2 * 42, 4 * 40 + 3 * 2, 3)  # rows of 4 renders, rgb panel only
