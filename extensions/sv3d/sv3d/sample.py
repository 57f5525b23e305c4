"""Command line: one image -> SV3D orbit (frames, mp4, transforms.json) or SVD video.

    python -m sv3d.sample --version sv3d_u --checkpoint sv3d_u.safetensors --image chair.png --output_dir out/
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional, Sequence

import numpy as np
import torch

from .cameras import SV3D_CAMERA_DISTANCE, SV3D_FOV_DEG, write_transforms_json
from .config import VERSIONS
from .pipeline import SV3DOutput, SV3DPipeline
from .preprocess import open_image


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sv3d.sample", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="original checkpoint (.safetensors / .ckpt) in generative-models layout")
    p.add_argument("--image", required=True, help="input image (RGBA with the object mask as alpha for SV3D)")
    p.add_argument("--version", choices=VERSIONS, default=None, help="model version (default: recognised from the checkpoint)")
    p.add_argument("--config", default=None, help="original sgm inference YAML (default: the shipped one)")
    p.add_argument("--output_dir", default="outputs/sv3d_sample")
    p.add_argument("--elevation", type=float, nargs="+", default=[10.0], help="degrees; one value or one per frame (sv3d_p)")
    p.add_argument("--azimuths", type=float, nargs="+", default=None, help="degrees per frame (sv3d_p); default evenly spaced, last = input")
    p.add_argument("--num_frames", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="Euler steps (default: 50 for SV3D, 25/30 for SVD/SVD-XT)")
    p.add_argument("--seed", type=int, default=23)
    p.add_argument("--decoding_t", type=int, default=14, help="frames decoded at a time (lower it to save memory)")
    p.add_argument("--cond_aug", type=float, default=None)
    p.add_argument("--image_frame_ratio", type=float, default=None, help="object size / frame size when centring (SV3D)")
    p.add_argument("--image_size", type=int, default=576, help="side of the square SV3D input (trained at 576)")
    p.add_argument("--fps_id", type=float, default=6)
    p.add_argument("--motion_bucket_id", type=float, default=127)
    p.add_argument("--fov", type=float, default=SV3D_FOV_DEG, help="field of view written to transforms.json (degrees)")
    p.add_argument("--distance", type=float, default=SV3D_CAMERA_DISTANCE, help="camera distance written to transforms.json")
    p.add_argument("--fps", type=int, default=7, help="frame rate of the mp4")
    p.add_argument("--device", default=None, help="cpu | cuda[:i] (default: cuda when available)")
    p.add_argument("--fp16", action="store_true", help="UNet and image encoder in float16 (CUDA)")
    return p


def save_outputs(out: SV3DOutput, output_dir: str, fps: int = 7, fov_deg: float = SV3D_FOV_DEG, distance: float = SV3D_CAMERA_DISTANCE) -> dict:
    """frames/NNN.png, input.png, video.mp4 and (orbits) transforms.json under output_dir; returns the paths."""
    import imageio

    frames_dir = os.path.join(output_dir, "frames")
    os.makedirs(frames_dir, exist_ok=True)
    video = (out.frames.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    names: List[str] = []
    for i, frame in enumerate(video):
        name = os.path.join("frames", f"{i:03d}.png")
        imageio.imwrite(os.path.join(output_dir, name), frame)
        names.append(name)
    out.input_image.save(os.path.join(output_dir, "input.png"))
    mp4 = os.path.join(output_dir, "video.mp4")
    imageio.mimwrite(mp4, list(video), fps=fps, macro_block_size=1)
    paths = {"frames": [os.path.join(output_dir, n) for n in names], "video": mp4}
    if out.azimuths_deg is not None:
        tj = os.path.join(output_dir, "transforms.json")
        write_transforms_json(tj, names, out.elevations_deg, out.azimuths_deg, fov_deg, distance, video.shape[2], video.shape[1])
        paths["transforms"] = tj
    return paths


def check_args(args: argparse.Namespace) -> None:
    """Bad values stop the run before the model is loaded (ValueError / FileNotFoundError naming the flag)."""
    for flag in ("steps", "num_frames", "decoding_t", "fps"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ValueError(f"--{flag} must be at least 1, got {value}")
    if args.image_size < 8 or args.image_size % 8:
        raise ValueError(f"--image_size must be a positive multiple of 8 (the VAE factor), got {args.image_size}")
    open_image(args.image)  # missing or undecodable input: say so before loading the model


def run(args: argparse.Namespace) -> dict:
    check_args(args)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if args.fp16 else None
    if args.fp16 and not str(device).startswith("cuda"):
        raise SystemExit("--fp16 needs a CUDA device")
    pipe = SV3DPipeline.from_single_file(args.checkpoint, original_config=args.config, version=args.version, torch_dtype=dtype, device=device)
    elev = args.elevation[0] if len(args.elevation) == 1 else args.elevation
    out = pipe(
        args.image,
        num_frames=args.num_frames,
        num_steps=args.steps,
        elevations_deg=elev,
        azimuths_deg=args.azimuths,
        cond_aug=args.cond_aug,
        seed=args.seed,
        decoding_t=args.decoding_t,
        fps_id=args.fps_id,
        motion_bucket_id=args.motion_bucket_id,
        image_frame_ratio=args.image_frame_ratio,
        image_size=args.image_size,
    )
    paths = save_outputs(out, args.output_dir, args.fps, args.fov, args.distance)
    with open(os.path.join(args.output_dir, "sample_args.json"), "w") as f:
        json.dump({**vars(args), "version": pipe.spec.version}, f, indent=2)
    print(f"{pipe.spec.version}: wrote {len(paths['frames'])} frames, {paths['video']}" + (f", {paths['transforms']}" if "transforms" in paths else ""))
    return paths


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
