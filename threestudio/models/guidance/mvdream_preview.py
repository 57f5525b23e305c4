"""`launch.py --config <mvdream config> --preview`: sample the prior's 4 views for the run's prompt and stop.

The seed's tip: check what MVDream itself makes of a prompt before paying for hours of distillation. Same
checkpoint, prompt, negative prompt, number of views and seed as the run; DDIM sampling with `mvdream`'s pipeline
at the guidance's image size, MVDream's t2i defaults otherwise (CFG 7.5, elevation 15°, first view from +x).
Writes `<trial>/preview/view{j}.png` and `grid.png` (one row, one column per view).
"""
from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import torch

from threestudio.models.guidance.mvdream_guidance import load_mvdream_pipeline, resolve_mvdream_checkpoint
from threestudio.utils.config import ConfigError

logger = logging.getLogger(__name__)

PREVIEW_GUIDANCE_SCALE = 7.5  # sampling CFG (the SDS scale of 50 would saturate plain sampling)


def sample_preview(cfg: Any, steps: int = 50, guidance_scale: float = PREVIEW_GUIDANCE_SCALE) -> str:
    """Sample the preview of an MVDream experiment config (ExperimentConfig); returns the output folder."""
    if cfg.system_type != "mvdream-system":
        raise ConfigError(f"--preview samples the MVDream prior; system_type is '{cfg.system_type}' "
                          "(use an MVDream config, e.g. configs/mvdream-sd21.yaml).")
    guidance = cfg.system.get("guidance", {})
    prompts = cfg.system.get("prompt_processor", {})
    path = guidance.get("pretrained_model_name_or_path") or guidance.get("ckpt_path")
    path = resolve_mvdream_checkpoint(path, "system.guidance.pretrained_model_name_or_path")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    half = device.type == "cuda" and guidance.get("half_precision_weights", True)
    pipe = load_mvdream_pipeline(path, guidance.get("original_config"), torch.float16 if half else torch.float32)
    pipe.to(device)
    n_view = int(guidance.get("n_view", 4))
    size = int(guidance.get("image_size", 256))
    generator = torch.Generator().manual_seed(int(cfg.seed))
    result = pipe(str(prompts.get("prompt", "")), negative_prompt=str(prompts.get("negative_prompt", "")),
                  num_views=n_view, height=size, width=size, num_inference_steps=steps,
                  guidance_scale=guidance_scale, generator=generator, output_type="np")
    views = (np.clip(result.images, 0, 1) * 255).round().astype(np.uint8)  # (n_view, H, W, 3)
    out = os.path.join(cfg.trial_dir, "preview")
    os.makedirs(out, exist_ok=True)
    from PIL import Image

    for j, view in enumerate(views):
        Image.fromarray(view).save(os.path.join(out, f"view{j}.png"))
    Image.fromarray(np.concatenate(list(views), axis=1)).save(os.path.join(out, "grid.png"))
    logger.info("Preview of %r (seed %d): %s", prompts.get("prompt"), cfg.seed, os.path.join(out, "grid.png"))
    return out
