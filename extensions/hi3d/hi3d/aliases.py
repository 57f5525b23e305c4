"""The seed's command lines (pipeline_i2v_eval_v01.py / _v02.py) as `hi3d.run` calls.

Besides our layout (DIR/stage1, DIR/stage2) the reference's file names are written too:
DIR/temp_image/{rgba,white}.png, DIR/first_step/first.mp4, DIR/second_step_video/second.mp4."""

from __future__ import annotations

import argparse
import os
import shutil
from typing import Sequence


from .run import build_parser, main

_CKPT = {1: "ckpts/first_stage.pt", 2: "ckpts/second_stage.pt"}


def alias_main(stage: int, doc: str) -> int:
    """The seed's `pipeline_i2v_eval_v0{stage}.py` flags; other flags go to hi3d.run."""
    p = argparse.ArgumentParser(description=doc)
    p.add_argument("--denoise_config", default=None, help="ignored: the model is described by the checkpoint")
    p.add_argument("--denoise_checkpoint", default=_CKPT[stage])
    p.add_argument("--image_path", required=True)
    p.add_argument("--output_dir", required=True)
    p.add_argument("--elevation", type=int, default=0)
    a, rest = p.parse_known_args()
    return run_alias(stage, a.denoise_checkpoint, a.image_path, a.output_dir, a.elevation, rest)


def run_alias(stage: int, checkpoint: str, image: str, output_dir: str, elevation: int, extra: Sequence[str] = ()) -> int:
    key = "--stage1-ckpt" if stage == 1 else "--stage2-ckpt"
    argv = ["--image", image, "--out", output_dir, "--stages", str(stage), "--elevation", str(elevation),
            "--ckpt-dir", os.path.dirname(os.path.abspath(checkpoint)), key, checkpoint, *extra]
    build_parser().parse_args(argv)  # report bad extra flags before any work
    rc = main(argv)
    if rc != 0:
        return rc
    src = os.path.join(output_dir, f"stage{stage}")
    if stage == 1:
        os.makedirs(os.path.join(output_dir, "temp_image"), exist_ok=True)
        shutil.copyfile(os.path.join(src, "input_rgba.png"), os.path.join(output_dir, "temp_image", "rgba.png"))
        shutil.copyfile(os.path.join(src, "input.png"), os.path.join(output_dir, "temp_image", "white.png"))
        dst = os.path.join(output_dir, "first_step", "first.mp4")
    else:
        dst = os.path.join(output_dir, "second_step_video", "second.mp4")
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    shutil.copyfile(os.path.join(src, "video.mp4"), dst)
    return 0
