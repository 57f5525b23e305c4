"""Score a finished trial: `python -m threestudio.evaluate <trial> [--clip /path/to/clip] [--distractors F]`.

- Reconstruction trials (posed images with a held-out split, e.g. `transforms_test.json`): the 3D model of
  `ckpts/last.ckpt` is rendered at every held-out camera and compared with the reference image composited on the
  evaluation background: PSNR and SSIM (torchmetrics) per view and their mean.
- Text-to-3D trials (a prompt in the config) with `--clip`: CLIP score (100 x max(cos, 0) of image and prompt
  embeddings, torchmetrics' definition) of the trial's test renders, and R-precision: the fraction of renders whose
  best-matching text among the prompt and distractor prompts is the prompt. `--clip` is a local transformers CLIP
  folder (CLIPModel + processor); nothing is downloaded.
- LPIPS is not computed: torchmetrics' LPIPS needs torchvision's backbones, which this project does not install.

Writes `<trial>/eval/it{N}/metrics.json` and `contact_sheet.png` (rows: reference | render | |error| x 4, or
the scored renders for text-to-3D) and prints the metrics.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys
from typing import Any, Optional

import numpy as np
import torch

DEFAULT_DISTRACTORS = (
    "a wooden chair", "a red sports car", "a teapot", "a house with a garden", "a cat sitting", "an astronaut",
    "a bowl of fruit", "a pair of sneakers", "a dragon", "a guitar", "a table lamp", "a castle", "a robot",
    "a coffee mug", "a bicycle", "a penguin", "a vase of flowers", "a hamburger", "a sailing ship", "a piano",
)


class EvaluationError(ValueError):
    """The trial folder lacks what evaluation needs."""


def _trial_files(trial: str) -> tuple[str, str]:
    parsed = os.path.join(trial, "configs", "parsed.yaml")
    ckpt = os.path.join(trial, "ckpts", "last.ckpt")
    for path, what in ((parsed, "configs/parsed.yaml"), (ckpt, "ckpts/last.ckpt")):
        if not os.path.isfile(path):
            raise EvaluationError(f"'{trial}' has no {what}: give a trial folder of a finished (or stopped) run, "
                                  "outputs/<name>/<tag>@<time>/.")
    return parsed, ckpt


def _to_nchw(image: torch.Tensor) -> torch.Tensor:
    """(1, H, W, 3) or (H, W, 3) in [0,1] -> (1, 3, H, W) float32."""
    image = image.reshape(-1, *image.shape[-3:]) if image.dim() == 4 else image[None]
    return image.permute(0, 3, 1, 2).float().clamp(0, 1)


def render_held_out_views(parsed: str, ckpt: str, split: str = "test"
                          ) -> tuple[list[np.ndarray], list[np.ndarray], int]:
    """(references, renders, step): the trial's model rendered at the cameras of `transforms_<split>.json`."""
    import threestudio
    from threestudio.utils.config import load_config

    cfg = load_config(parsed, cli_args=["data.test_views=split", f"data.test_split={split}"])
    dm = threestudio.find(cfg.data_type)(cfg.data)
    dm.setup("test")
    system = threestudio.find(cfg.system_type)(cfg.system)
    if not hasattr(system, "render_view"):
        raise EvaluationError(f"system '{cfg.system_type}' cannot render held-out views.")
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    system.on_load_checkpoint(state)
    system.load_state_dict(state["state_dict"], strict=False)
    system.eval()
    refs, renders = [], []
    for batch in dm.test_dataloader():
        out = system.render_view(batch)
        refs.append(batch["rgb"][0].float().numpy())
        renders.append(out["comp_rgb"][0].clamp(0, 1).float().numpy())
    return refs, renders, int(state.get("global_step", 0))


def image_metrics(refs: list[np.ndarray], renders: list[np.ndarray]) -> dict[str, Any]:
    """Per-view and mean PSNR / SSIM (data range 1) of (H, W, 3) images."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    views = []
    for i, (ref, out) in enumerate(zip(refs, renders)):
        a, b = _to_nchw(torch.from_numpy(out)), _to_nchw(torch.from_numpy(ref))
        views.append({"view": i, "psnr": float(peak_signal_noise_ratio(a, b, data_range=1.0)),
                      "ssim": float(structural_similarity_index_measure(a, b, data_range=1.0))})
    return {"views": views, "psnr": float(np.mean([v["psnr"] for v in views])),
            "ssim": float(np.mean([v["ssim"] for v in views]))}


def test_renders(trial: str, n_panels: int) -> tuple[list[np.ndarray], int]:
    """The RGB panel of the latest test stage's images (save/it{N}-test/*.png), and N."""
    from PIL import Image

    folders = [f for f in glob.glob(os.path.join(trial, "save", "it*-test")) if os.path.isdir(f)]
    if not folders:
        raise EvaluationError(f"'{trial}' has no save/it{{N}}-test/ renders; run the test stage first "
                              "(launch.py --config <trial>/configs/parsed.yaml --test resume=<trial>/ckpts/last.ckpt).")
    step_of = lambda f: int(re.search(r"it(\d+)-test$", f).group(1))  # noqa: E731
    folder = max(folders, key=step_of)
    files = sorted(glob.glob(os.path.join(folder, "*.png")), key=lambda p: int(re.sub(r"\D", "", os.path.basename(p)) or 0))
    images = []
    for path in files:
        image = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
        width = image.shape[1] // max(n_panels, 1)
        images.append(image[:, :width])
    return images, step_of(folder)


@torch.no_grad()
def clip_metrics(images: list[np.ndarray], prompt: str, distractors: list[str], clip_path: str) -> dict[str, Any]:
    """CLIP score (mean over images of 100 x max(cos, 0)) and R-precision against `distractors`."""
    from transformers import CLIPModel, CLIPProcessor

    if not os.path.isdir(clip_path):
        raise EvaluationError(f"--clip '{clip_path}' is not a folder; give a local transformers CLIP model folder "
                              "(config.json, weights, tokenizer and preprocessor files).")
    model = CLIPModel.from_pretrained(clip_path).eval()
    processor = CLIPProcessor.from_pretrained(clip_path)
    texts = [prompt] + [d for d in distractors if d != prompt]
    pixel = processor(images=[(im * 255).round().astype(np.uint8) for im in images], return_tensors="pt")
    tokens = processor(text=texts, return_tensors="pt", padding=True)
    image_emb = model.get_image_features(pixel_values=pixel["pixel_values"])
    text_emb = model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
    image_emb = torch.nn.functional.normalize(getattr(image_emb, "pooler_output", image_emb), dim=-1)
    text_emb = torch.nn.functional.normalize(getattr(text_emb, "pooler_output", text_emb), dim=-1)
    cos = image_emb @ text_emb.T  # (images, texts)
    return {"clip_score": float((100 * cos[:, 0].clamp_min(0)).mean()),
            "r_precision": float((cos.argmax(dim=1) == 0).float().mean()),
            "n_distractors": len(texts) - 1}


def contact_sheet(rows: list[list[np.ndarray]], path: str, max_rows: int = 8) -> None:
    """Rows of equally tall (H, W, 3) float images in [0,1], stacked; a 2-pixel white gap between images."""
    from PIL import Image

    picked = rows if len(rows) <= max_rows else [rows[i] for i in np.linspace(0, len(rows) - 1, max_rows).astype(int)]
    lines = []
    for row in picked:
        gap = np.ones((row[0].shape[0], 2, 3), np.float32)
        lines.append(np.concatenate([x for im in row for x in (im, gap)][:-1], axis=1))
    width = max(line.shape[1] for line in lines)
    lines = [np.pad(line, ((0, 2), (0, width - line.shape[1]), (0, 0)), constant_values=1.0) for line in lines]
    sheet = (np.clip(np.concatenate(lines, axis=0), 0, 1) * 255).round().astype(np.uint8)
    Image.fromarray(sheet).save(path)


def evaluate(trial: str, clip: Optional[str] = None, distractors: Optional[list[str]] = None,
             split: str = "test") -> dict[str, Any]:
    """Evaluate a trial folder; writes eval/it{N}/metrics.json and contact_sheet.png; returns the metrics."""
    from omegaconf import OmegaConf

    parsed, ckpt = _trial_files(trial)
    raw = OmegaConf.to_container(OmegaConf.load(parsed), resolve=False)
    prompt = (raw.get("system", {}).get("prompt_processor") or {}).get("prompt")
    has_split = raw.get("data_type") == "multiview-image-datamodule" and glob.glob(
        os.path.join(str(raw.get("data", {}).get("dataroot", "")), f"transforms_{split}.json"))
    metrics: dict[str, Any] = {"trial": os.path.abspath(trial), "system_type": raw.get("system_type"),
                               "lpips": None, "lpips_note": "not computed: torchmetrics' LPIPS needs torchvision"}
    rows: list[list[np.ndarray]] = []
    if has_split:
        refs, renders, step = render_held_out_views(parsed, ckpt, split)
        metrics.update(image_metrics(refs, renders), step=step, split=split, held_out_views=len(refs))
        rows = [[r, o, np.repeat(np.abs(o - r).mean(-1, keepdims=True).clip(0, 0.25) * 4, 3, -1)]
                for r, o in zip(refs, renders)]
    if prompt:
        images, step = test_renders(trial, len(raw.get("system", {}).get("test_panels") or ["rgb"]))
        metrics.setdefault("step", step)
        metrics["prompt"] = prompt
        if clip:
            metrics.update(clip_metrics(images, prompt, list(distractors or DEFAULT_DISTRACTORS), clip))
        if not rows:
            rows = [images[i:i + 4] for i in range(0, len(images), 4)]
    if not rows:
        raise EvaluationError(f"Nothing to evaluate in '{trial}': its data has no held-out split "
                              f"(transforms_{split}.json) and its config no prompt.")
    out = os.path.join(trial, "eval", f"it{metrics['step']}")
    os.makedirs(out, exist_ok=True)
    contact_sheet(rows, os.path.join(out, "contact_sheet.png"))
    with open(os.path.join(out, "metrics.json"), "w") as fp:
        json.dump(metrics, fp, indent=2)
    metrics["output_dir"] = out
    return metrics


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m threestudio.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("trial", help="trial folder outputs/<name>/<tag>@<time>")
    parser.add_argument("--clip", default=None, help="local transformers CLIP folder (text-to-3D trials)")
    parser.add_argument("--split", default="test", help="held-out split of a posed-image dataset (transforms_<split>.json)")
    parser.add_argument("--distractors", default=None, help="text file, one distractor prompt per line (R-precision)")
    args = parser.parse_args(argv)
    distractors = None
    if args.distractors:
        with open(args.distractors) as fp:
            distractors = [line.strip() for line in fp if line.strip()]
    try:
        metrics = evaluate(args.trial, clip=args.clip, distractors=distractors, split=args.split)
    except EvaluationError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary = {k: v for k, v in metrics.items() if k != "views"}
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
