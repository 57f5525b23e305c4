"""One command for Hi3D: image -> stage 1 (16-view orbit, 512²) -> stage 2 (1024² refinement) -> stage 3 (mesh).

    python -m hi3d.run --image x.png --ckpt-dir ckpts/ --out DIR [--elevation 0] [--stages 1,2,3]

Each stage writes DIR/stage<N>/ (frames/NNN.png, video.mp4, transforms.json; stage 3: the reconstruction trial
and mesh) and, last, DIR/stage<N>/done.json. A stage whose done.json matches the current settings is skipped, so
an interrupted run resumes at the first unfinished stage; one made with other settings is an error unless
--force (which redoes it, and the stages after it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from typing import Dict, List, Optional, Sequence

import torch

DONE = "done.json"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hi3d.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image", required=True, help="RGBA image (alpha = object mask), or RGB with --mask or on a plain background")
    p.add_argument("--mask", default=None, help="object mask for an RGB image (white = object)")
    p.add_argument("--ckpt-dir", default="ckpts", help="folder with first_stage.pt, second_stage.pt and the auxiliary files")
    p.add_argument("--stage1-ckpt", default=None, help="default: <ckpt-dir>/first_stage.pt")
    p.add_argument("--stage2-ckpt", default=None, help="default: <ckpt-dir>/second_stage.pt")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--stages", default="1,2,3", help="comma-separated subset of 1,2,3")
    p.add_argument("--elevation", type=int, default=0, help="camera elevation of the input, integer degrees (trained: -10..40)")
    p.add_argument("--seed", type=int, default=23)
    p.add_argument("--steps1", type=int, default=25)
    p.add_argument("--steps2", type=int, default=25)
    p.add_argument("--resolution1", type=int, default=512)
    p.add_argument("--resolution2", type=int, default=1024)
    p.add_argument("--num-frames", type=int, default=16, help="views per orbit (the models were trained on 16; fewer only for tests)")
    p.add_argument("--aesthetic-score", type=float, default=None, help="override the predicted aesthetic score")
    p.add_argument("--frame-ratio", type=float, default=None, help="recentre the object: its size / frame size (default: the reference's centre crop)")
    p.add_argument("--device", default=None, help="cpu | cuda[:i] (default: cuda when available)")
    p.add_argument("--fp16", action="store_true", help="UNet and image encoders in float16 (CUDA); VAEs stay float32")
    p.add_argument("--attention-slicing", type=int, default=0, help="slice size for sliced attention (0: off)")
    p.add_argument("--no-cfg-batch", action="store_true", help="run the two guidance branches one after the other")
    p.add_argument("--decoding-t", type=int, default=1, help="frames decoded at a time")
    p.add_argument("--encode-chunk", type=int, default=1, help="frames encoded (VAE, depth) at a time in stage 2")
    p.add_argument("--fov", type=float, default=40.0, help="field of view of the 16 views (degrees; not in Hi3D's code)")
    p.add_argument("--distance", type=float, default=2.0, help="camera distance of the 16 views (not in Hi3D's code)")
    p.add_argument("--launch", default=None, help="the toolkit's launch.py (stage 3)")
    p.add_argument("--recon-config", default=None, help="reconstruction config (default configs/reconstruction-example.yaml)")
    p.add_argument("--recon-steps", type=int, default=None, help="reconstruction steps (default: the config's)")
    p.add_argument("--recon-override", action="append", default=[], help="key=value passed to launch.py (repeatable)")
    p.add_argument("--refine", action="store_true", help="stage 3: then the mesh-refinement stage (configs/reconstruction-refine.yaml)")
    p.add_argument("--refine-steps", type=int, default=None)
    p.add_argument("--refine-override", action="append", default=[], help="key=value for the refinement run (repeatable)")
    p.add_argument("--force", action="store_true", help="redo stages already done with other settings")
    return p


def _stages(text: str) -> List[int]:
    try:
        stages = sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        raise ValueError(f"--stages {text!r}: give a comma-separated subset of 1,2,3") from None
    if not stages or any(s not in (1, 2, 3) for s in stages):
        raise ValueError(f"--stages {text!r}: give a comma-separated subset of 1,2,3")
    return stages


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _settings(args, stage: int, upstream: Optional[dict]) -> dict:
    common = {"image": _file_digest(args.image), "mask": _file_digest(args.mask) if args.mask else None,
              "elevation": args.elevation, "seed": args.seed, "upstream": upstream.get("settings_digest") if upstream else None}
    if stage == 1:
        return dict(common, ckpt=os.path.abspath(args.stage1_ckpt), steps=args.steps1, res=args.resolution1, frames=args.num_frames,
                    aesthetic=args.aesthetic_score, frame_ratio=args.frame_ratio)
    if stage == 2:
        return dict(common, ckpt=os.path.abspath(args.stage2_ckpt), steps=args.steps2, res=args.resolution2,
                    fov=args.fov, distance=args.distance, frame_ratio=args.frame_ratio)
    return dict(common, config=args.recon_config, steps=args.recon_steps, overrides=list(args.recon_override),
                refine=args.refine, refine_steps=args.refine_steps, refine_overrides=list(args.refine_override))


def _done(stage_dir: str) -> Optional[dict]:
    path = os.path.join(stage_dir, DONE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _check_resume(stage_dir: str, settings: dict, force: bool) -> bool:
    """True when the stage is already done with these settings (skip it)."""
    done = _done(stage_dir)
    if done is None:
        return False
    if done.get("settings_digest") == _digest(settings):
        return True
    if not force:
        raise ValueError(
            f"{stage_dir} was made with other settings ({done.get('settings')}); pass --force to redo it (and the "
            "stages after it) or choose another --out"
        )
    os.remove(os.path.join(stage_dir, DONE))
    return False


def _write_done(stage_dir: str, settings: dict, result: dict) -> dict:
    record = {"settings": settings, "settings_digest": _digest(settings), **result}
    tmp = os.path.join(stage_dir, DONE + ".tmp")
    with open(tmp, "w") as f:
        json.dump(record, f, indent=2)
    os.replace(tmp, os.path.join(stage_dir, DONE))
    return record


def _load_pipe(path: str, args, device: str):
    from .pipeline import Hi3DPipeline

    dtype = torch.float16 if args.fp16 else None
    pipe = Hi3DPipeline.from_single_file(path, ckpt_dir=args.ckpt_dir, torch_dtype=dtype, device=device)
    if args.attention_slicing:
        pipe.enable_attention_slicing(args.attention_slicing)
    return pipe


def run_stage1(args, device: str, stage_dir: str, settings: dict) -> dict:
    from .orbit_io import save_orbit
    from .preprocess import prepare_input
    from .stage1 import sample_orbit

    rgba, square, x = prepare_input(args.image, args.resolution1, args.mask, args.frame_ratio)
    os.makedirs(stage_dir, exist_ok=True)
    rgba.save(os.path.join(stage_dir, "input_rgba.png"))
    square.save(os.path.join(stage_dir, "input.png"))
    pipe = _load_pipe(args.stage1_ckpt, args, device)
    out = sample_orbit(pipe, x, args.elevation, args.steps1, args.seed, aesthetic_score=args.aesthetic_score, num_frames=args.num_frames,
                       decoding_t=args.decoding_t, cfg_batch=not args.no_cfg_batch)
    paths = save_orbit(out.frames, stage_dir, args.elevation, args.fov, args.distance)
    return _write_done(stage_dir, settings, {"aesthetic_score": out.aesthetic_score, "video": paths["video"],
                                             "transforms": paths["transforms"], "elevation_deg": args.elevation})


def stage2_inputs(args, stage1_dir: str, size: int) -> torch.Tensor:
    """Stage-1 frames (PNG; else the reference's first_step/first.mp4), frame 0 replaced by the input image."""
    from .orbit_io import read_orbit_frames, read_video_frames
    from .preprocess import frames_to_tensor, prepare_input

    frames = read_orbit_frames(stage1_dir)
    if frames is None:
        legacy = os.path.join(args.out, "first_step", "first.mp4")
        if not os.path.isfile(legacy):
            raise FileNotFoundError(f"stage 2 needs stage 1's frames: none in {stage1_dir}/frames (run --stages 1 first)")
        frames = read_video_frames(legacy, args.num_frames)
    _, square, _ = prepare_input(args.image, size, args.mask, args.frame_ratio)
    frames = [square] + list(frames[1:])
    return frames_to_tensor(frames, size)


def run_stage2(args, device: str, stage_dir: str, stage1_dir: str, settings: dict) -> dict:
    from .orbit_io import save_orbit
    from .stage2 import refine_orbit

    x = stage2_inputs(args, stage1_dir, args.resolution2)
    pipe = _load_pipe(args.stage2_ckpt, args, device)
    out = refine_orbit(pipe, x, args.elevation, args.steps2, args.seed, decoding_t=args.decoding_t,
                       encode_chunk=args.encode_chunk, cfg_batch=not args.no_cfg_batch)
    os.makedirs(stage_dir, exist_ok=True)
    paths = save_orbit(out.frames, stage_dir, args.elevation, args.fov, args.distance)
    return _write_done(stage_dir, settings, {"video": paths["video"], "transforms": paths["transforms"],
                                             "elevation_deg": args.elevation})


def run(args: argparse.Namespace) -> Dict[str, dict]:
    stages = _stages(args.stages)
    if not os.path.isfile(args.image):
        raise FileNotFoundError(f"--image {args.image!r} does not exist")
    args.stage1_ckpt = args.stage1_ckpt or os.path.join(args.ckpt_dir, "first_stage.pt")
    args.stage2_ckpt = args.stage2_ckpt or os.path.join(args.ckpt_dir, "second_stage.pt")
    for s, path in ((1, args.stage1_ckpt), (2, args.stage2_ckpt)):
        if s in stages and not os.path.isfile(path):
            raise FileNotFoundError(f"stage {s} checkpoint {path!r} does not exist (see --ckpt-dir / --stage{s}-ckpt)")
    if args.fp16 and not str(args.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda"):
        raise ValueError("--fp16 needs a CUDA device")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dirs = {s: os.path.join(args.out, f"stage{s}") for s in (1, 2, 3)}
    results: Dict[str, dict] = {}
    upstream: Optional[dict] = None
    redo = False
    for s in (1, 2, 3):
        if s not in stages:
            upstream = _done(dirs[s]) or upstream
            continue
        settings = _settings(args, s, upstream)
        skip = not redo and _check_resume(dirs[s], settings, args.force)
        if skip:
            print(f"stage {s}: already done in {dirs[s]}, skipped")
            results[f"stage{s}"] = upstream = _done(dirs[s])
            continue
        redo = True  # later stages depend on this one
        if s == 1:
            record = run_stage1(args, device, dirs[1], settings)
        elif s == 2:
            record = run_stage2(args, device, dirs[2], dirs[1], settings)
        else:
            from .stage3 import run_reconstruction

            orbit = dirs[2] if os.path.isfile(os.path.join(dirs[2], "transforms.json")) else dirs[1]
            paths = run_reconstruction(orbit, dirs[3], args.launch, args.recon_config, args.recon_steps, args.elevation,
                                       args.recon_override)
            if args.refine:
                coarse = os.path.join(paths["trial"], "ckpts", "last.ckpt")
                # the refinement inherits the coarse texture field: it must be built like the coarse geometry
                same_geometry = [o for o in args.recon_override if o.startswith("system.geometry.")]
                refined = run_reconstruction(orbit, dirs[3], args.launch, None, args.refine_steps, args.elevation,
                                             same_geometry + list(args.refine_override), refine_from=coarse)
                paths = {**{f"coarse_{k}": v for k, v in paths.items()}, **refined}
            record = _write_done(dirs[3], settings, {**paths, "orbit": orbit})
        print(f"stage {s}: done -> {dirs[s]}")
        results[f"stage{s}"] = upstream = record
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
