"""Diffusion² command line: an image (image-to-4D) or a folder of frames 0.png, 1.png, ... (video-to-4D) ->
a views x frames image matrix, its videos and per-frame cameras.

    python -m diffusion2.sample --input_path chair.png --sv3d sv3d_p.safetensors --svd svd_xt.safetensors --out out/
    torchrun --nproc_per_node 4 -m diffusion2.sample --input_path frames/ --sv3d ... --svd ... --out out/
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

import torch
from sv3d.cameras import SV3D_CAMERA_DISTANCE, SV3D_FOV_DEG

from .config import Diffusion2Config
from .distributed import DistContext, close, init_from_env
from .inputs import load_input
from .outputs import check_output_dir, to_uint8, write_frame_transforms, write_preview, write_video, write_view
from .pipeline import Diffusion2Pipeline
from .weights import SCHEDULES


def build_parser() -> argparse.ArgumentParser:
    d = Diffusion2Config()
    p = argparse.ArgumentParser(prog="python -m diffusion2.sample", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input_path", required=True, help="an image, or a folder of frames 0.png, 1.png, ... (at most 25)")
    p.add_argument("--sv3d", required=True, help="sv3d_p.safetensors (generative-models layout)")
    p.add_argument("--svd", required=True, help="svd_xt.safetensors (generative-models layout)")
    p.add_argument("--out", required=True, help="output folder (an earlier result in it is never overwritten without --overwrite)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--num_steps", type=int, default=d.num_steps)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--elevations_deg", type=float, nargs="+", default=[d.elevations_deg], help="one value or one per view")
    p.add_argument("--azimuths_deg", type=float, nargs="+", default=None, help="one per view; the last is the input view")
    p.add_argument("--num_views", type=int, default=d.num_views)
    p.add_argument("--num_frames", type=int, default=d.num_frames, help="video length for an image input (a video sets it)")
    p.add_argument("--image_frame_ratio", type=float, default=None, help="object size / frame size when centring")
    p.add_argument("--image_size", type=int, default=d.image_size, help="side of the square frames (trained at 576)")
    p.add_argument("--fps_id", type=float, default=d.fps_id)
    p.add_argument("--motion_bucket_id", type=float, default=d.motion_bucket_id)
    p.add_argument("--sv3d_scale_schedule", choices=SCHEDULES, default=d.scale_schedule)
    p.add_argument("--sv3d_scale", type=float, default=d.sv3d_scale, help="constant share, or the logistic midpoint")
    p.add_argument("--sv3d_scale_min", type=float, default=d.sv3d_scale_min)
    p.add_argument("--sv3d_scale_max", type=float, default=d.sv3d_scale_max)
    p.add_argument("--scale_k", type=float, default=d.scale_k, help="steepness of the logistic schedule")
    p.add_argument("--vrs_steps", type=int, default=d.vrs_steps, help="first steps re-noised and redone once (VRS)")
    p.add_argument("--sv3d_cfg", type=float, nargs=2, default=[d.sv3d_min_scale, d.sv3d_max_scale], metavar=("MIN", "MAX"))
    p.add_argument("--svd_cfg", type=float, nargs=2, default=[d.svd_min_scale, d.svd_max_scale], metavar=("MIN", "MAX"))
    p.add_argument("--azimuth_id_zero", action="store_true",
                   help="give the input view the azimuth id 0 (generative-models) instead of 2*pi (the Diffusion² code)")
    p.add_argument("--chunk", type=int, default=d.chunk, help="lines (orbits/videos) per UNet call; x2 for CFG")
    p.add_argument("--decoding_t", type=int, default=d.decoding_t, help="frames per VAE decode call")
    p.add_argument("--fps", type=int, default=6, help="frame rate of the mp4 files")
    p.add_argument("--fov", type=float, default=SV3D_FOV_DEG, help="field of view written to the transforms files (degrees)")
    p.add_argument("--distance", type=float, default=SV3D_CAMERA_DISTANCE, help="camera distance written to the transforms files")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available; torchrun: cuda:LOCAL_RANK)")
    p.add_argument("--fp16", action="store_true", help="UNets and image encoders in float16 (CUDA)")
    p.add_argument("--no_progress", action="store_true")
    p.add_argument("--save_latents", action="store_true", help="also write the sampled matrix as OUT/latents.safetensors")
    return p


def config_from_args(a: argparse.Namespace) -> Diffusion2Config:
    cfg = Diffusion2Config(
        num_views=a.num_views, num_frames=a.num_frames, num_steps=a.num_steps, seed=a.seed,
        elevations_deg=a.elevations_deg[0] if len(a.elevations_deg) == 1 else a.elevations_deg,
        azimuths_deg=a.azimuths_deg, fps_id=a.fps_id, motion_bucket_id=a.motion_bucket_id,
        sv3d_min_scale=a.sv3d_cfg[0], sv3d_max_scale=a.sv3d_cfg[1], svd_min_scale=a.svd_cfg[0], svd_max_scale=a.svd_cfg[1],
        scale_schedule=a.sv3d_scale_schedule, sv3d_scale=a.sv3d_scale, sv3d_scale_min=a.sv3d_scale_min,
        sv3d_scale_max=a.sv3d_scale_max, scale_k=a.scale_k, vrs_steps=a.vrs_steps, chunk=a.chunk,
        decoding_t=a.decoding_t, image_size=a.image_size, last_azimuth_full_turn=not a.azimuth_id_zero)
    return cfg


def run(a: argparse.Namespace, ctx: Optional[DistContext] = None) -> dict:
    """Everything that can be checked is checked before a model is loaded."""
    cfg = config_from_args(a)
    inp = load_input(a.input_path, a.image_frame_ratio, cfg.image_size)
    if inp.is_video:
        cfg.num_frames = inp.video.shape[0]
    cfg.validate()
    check_output_dir(a.out, a.overwrite)
    for flag, path in (("--sv3d", a.sv3d), ("--svd", a.svd)):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{flag} checkpoint {path!r} does not exist: pass the path of the released file")
    if a.fp16 and not (torch.cuda.is_available() and (a.device or "cuda").startswith("cuda")):
        raise ValueError("--fp16 needs a CUDA device")
    ctx = ctx or init_from_env(a.device)
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda":
        device = f"cuda:{ctx.local_rank}"
    pipe = Diffusion2Pipeline.from_single_files(a.sv3d, a.svd, device=device, torch_dtype=torch.float16 if a.fp16 else None)
    result = pipe(inp, cfg, ctx, progress=not a.no_progress)

    os.makedirs(a.out, exist_ok=True)
    for v in ctx.share(cfg.num_views):  # every rank decodes and writes its own views
        write_view(a.out, v, pipe.decode_view(result.latents[v], cfg.decoding_t), a.fps)
    ctx.barrier()
    if ctx.is_main:
        write_video(os.path.join(a.out, "ref_multiview.mp4"), to_uint8((result.orbit + 1) / 2), a.fps)
        write_video(os.path.join(a.out, "ref_video.mp4"), to_uint8((result.video + 1) / 2), a.fps)
        write_preview(a.out, cfg.num_views, cfg.num_frames, a.fps)
        write_frame_transforms(a.out, cfg.num_frames, cfg.elevations(), cfg.azimuths(), cfg.image_size, a.fov, a.distance)
        if a.save_latents:
            from safetensors.torch import save_file

            save_file({"latents": result.latents.cpu().contiguous(), "orbit": result.orbit.cpu().contiguous(),
                       "video": result.video.cpu().contiguous()}, os.path.join(a.out, "latents.safetensors"))
        with open(os.path.join(a.out, "sample_args.json"), "w") as f:
            json.dump({**vars(a), "world_size": ctx.world_size}, f, indent=2)
        print(f"Diffusion²: wrote {cfg.num_views} views x {cfg.num_frames} frames to {a.out}")
    ctx.barrier()
    return {"result": result, "config": cfg}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    ctx = None
    try:
        ctx = init_from_env(args.device)
        run(args, ctx)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if ctx is not None:
            close(ctx)
    return 0


if __name__ == "__main__":
    sys.exit(main())
