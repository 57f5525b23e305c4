"""Command line: sample consistent views of one object from a prompt.

    python -m mvdream.t2i --checkpoint sd-v2.1-base-4view.pt --prompt "an astronaut riding a horse"

The upstream script's spellings work too (`scripts/t2i.py --num_frames 4 --ckpt_path ... --text ...`).
Writes `grid.png` (one row per sample, one column per view) and `sample{i}_view{j}.png` to --output_dir.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch

CHECKPOINT_ENV = "MVDREAM_CHECKPOINT"
MODEL_NAMES = ("sd-v2.1-base-4view", "sd-v1.5-4view")


def build_parser() -> argparse.ArgumentParser:
    """Arguments of the command line (new names first, the upstream t2i.py names as aliases)."""
    p = argparse.ArgumentParser(prog="python -m mvdream.t2i", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", "--ckpt_path", dest="checkpoint", default=os.environ.get(CHECKPOINT_ENV),
                   help=f"original checkpoint (.pt/.ckpt/.safetensors); default ${CHECKPOINT_ENV}")
    p.add_argument("--pretrained", default=None, help="folder written by MVDreamPipeline.save_pretrained (instead of --checkpoint)")
    p.add_argument("--config", "--config_path", dest="config", default=None,
                   help="original LDM YAML; default: the shipped one for --model_name / the checkpoint's text tower")
    p.add_argument("--model_name", choices=MODEL_NAMES, default=None, help="which shipped YAML to use")
    p.add_argument("--prompt", "--text", dest="prompt", default="an astronaut riding a horse")
    p.add_argument("--suffix", default=", 3d asset", help="appended to the prompt, as in MVDream")
    p.add_argument("--negative_prompt", default="")
    p.add_argument("--num_frames", type=int, default=4, help="views per object")
    p.add_argument("--num_samples", type=int, default=1, help="objects to sample (rows of the grid)")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps")
    p.add_argument("--guidance_scale", type=float, default=10.0)
    p.add_argument("--elevation", "--camera_elev", dest="elevation", type=float, default=15.0)
    p.add_argument("--azimuth_start", "--camera_azim", dest="azimuth_start", type=float, default=90.0,
                   help="first view's azimuth, MVDream convention (90 = from +x)")
    p.add_argument("--azimuth_span", "--camera_azim_span", dest="azimuth_span", type=float, default=360.0)
    p.add_argument("--use_camera", type=int, default=1, help="0: no camera conditioning")
    p.add_argument("--size", type=int, default=256, help="image size in pixels")
    p.add_argument("--seed", type=int, default=23)
    p.add_argument("--fp16", action="store_true", help="half precision (for CUDA)")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--output_dir", default="mvdream-samples")
    return p


def set_seed(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch like the original script; returns the generator used for the noise."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def check_args(args: argparse.Namespace) -> Optional[str]:
    """The first bad argument as a message, or None; checked before the model is loaded."""
    for flag in ("steps", "num_frames", "num_samples", "size"):
        if getattr(args, flag) < 1:
            return f"--{flag} must be at least 1, got {getattr(args, flag)}"
    if args.size % 8:
        return f"--size must be a multiple of 8 (the VAE factor), got {args.size}"
    if not np.isfinite(args.guidance_scale):
        return f"--guidance_scale must be a finite number, got {args.guidance_scale}"
    return None


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    problem = check_args(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    from .pipeline import MVDreamPipeline  # heavy imports after argument parsing (fast --help)

    if args.pretrained:
        pipe = MVDreamPipeline.from_pretrained(args.pretrained)
    elif args.checkpoint:
        pipe = MVDreamPipeline.from_single_file(args.checkpoint, original_config=args.config or args.model_name)
    else:
        print(
            "error: no checkpoint. Download sd-v2.1-base-4view.pt from https://huggingface.co/MVDream/MVDream and pass "
            f"--checkpoint PATH (or set ${CHECKPOINT_ENV}); this tool never downloads.",
            file=sys.stderr,
        )
        return 2
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.float16 if args.fp16 else torch.float32
    pipe.to(device=device, dtype=dtype)
    generator = set_seed(args.seed)
    prompt = args.prompt + args.suffix
    result = pipe(
        [prompt] * args.num_samples,
        negative_prompt=args.negative_prompt,
        num_views=args.num_frames,
        height=args.size,
        width=args.size,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance_scale,
        elevation=args.elevation,
        azimuth_start=args.azimuth_start,
        azimuth_span=args.azimuth_span,
        use_camera=bool(args.use_camera),
        generator=generator,
        output_type="np",
    )
    views = (result.images * 255).round().astype(np.uint8)  # (samples * frames, H, W, 3), grouped by sample
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    rows = views.reshape(args.num_samples, args.num_frames, *views.shape[1:])
    for i, row in enumerate(rows):
        for j, view in enumerate(row):
            Image.fromarray(view).save(out / f"sample{i}_view{j}.png")
    grid = np.concatenate([np.concatenate(list(row), axis=1) for row in rows], axis=0)
    Image.fromarray(grid).save(out / "grid.png")
    print(f"prompt: {prompt!r}; wrote {out / 'grid.png'} and {len(views)} views")
    return 0


if __name__ == "__main__":
    sys.exit(main())
