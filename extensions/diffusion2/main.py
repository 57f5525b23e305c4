"""The Diffusion² reference's spelling (run from extensions/diffusion2/, checkpoints in checkpoints/):

    python main.py --input_path SAMPLE --elevations_deg 0.0 --image_frame_ratio 0.9

translated to `python -m diffusion2.sample`. Output folder as the reference: output/<name>/<custom_prefix>_seed_<seed>.
Flags of diffusion2.sample (--chunk, --fp16, --sv3d, --svd, ...) pass through; torchrun works the same way
(`torchrun --nproc_per_node N main.py ...`), the reference's --world_size is not needed.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys

from diffusion2.sample import main as sample_main

# variants of the reference's experimental switches that this port does not implement: flag -> its default
_UNSUPPORTED = {"num_iters_stage_1": 1, "num_iters_stage_2": 1, "noise_from_mv": False, "svd_cfg_warmup": False,
                "uc_type": "default", "conv_blend": False}


def _values(text: str) -> list:
    """'0.0', '10', '[0, 10, 20]' (Fire's spelling) -> list of floats; literals only, nothing is evaluated."""
    v = ast.literal_eval(text)
    return [float(x) for x in (v if isinstance(v, (list, tuple)) else [v])]


def translate(argv=None) -> list:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input_path", required=True)
    p.add_argument("--num_steps", type=int, default=50)
    p.add_argument("--fps_id", type=int, default=24)
    p.add_argument("--motion_bucket_id", type=int, default=127)
    p.add_argument("--seed", type=int, default=23)
    p.add_argument("--decoding_t", type=int, default=10)
    p.add_argument("--device", default=None)
    p.add_argument("--output_folder", default=None)
    p.add_argument("--elevations_deg", default="10.0")
    p.add_argument("--azimuths_deg", default=None)
    p.add_argument("--image_frame_ratio", type=float, default=None)
    p.add_argument("--verbose", default=None, help="(ignored)")
    p.add_argument("--sv3d_scale", type=float, default=0.6)
    p.add_argument("--sv3d_scale_min", type=float, default=0.0)
    p.add_argument("--sv3d_scale_max", type=float, default=1.0)
    p.add_argument("--custom_prefix", default="default")
    p.add_argument("--sv3d_scale_schedule", default="constant")
    p.add_argument("--scale_k", type=float, default=15.0)
    p.add_argument("--world_size", type=int, default=None, help="(ignored: launch with torchrun --nproc_per_node N)")
    p.add_argument("--sv3d", default=os.path.join("checkpoints", "sv3d_p.safetensors"))
    p.add_argument("--svd", default=os.path.join("checkpoints", "svd_xt.safetensors"))
    for name, default in _UNSUPPORTED.items():
        p.add_argument(f"--{name}", default=None)
    a, rest = p.parse_known_args(argv)
    for name, default in _UNSUPPORTED.items():
        value = getattr(a, name)
        if value is not None and str(value) != str(default):
            raise SystemExit(f"--{name} {value}: this experimental variant of the reference is not implemented (default {default})")
    name = os.path.basename(os.path.normpath(a.input_path))
    name = name if os.path.isdir(a.input_path) else name.split(".")[0]
    out = os.path.join(a.output_folder or os.path.join("output", name), f"{a.custom_prefix}_seed_{a.seed:07d}")
    args = ["--input_path", a.input_path, "--sv3d", a.sv3d, "--svd", a.svd, "--out", out,
            "--num_steps", str(a.num_steps), "--fps_id", str(a.fps_id), "--motion_bucket_id", str(a.motion_bucket_id),
            "--seed", str(a.seed), "--decoding_t", str(a.decoding_t), "--elevations_deg", *map(str, _values(a.elevations_deg)),
            "--sv3d_scale", str(a.sv3d_scale), "--sv3d_scale_min", str(a.sv3d_scale_min),
            "--sv3d_scale_max", str(a.sv3d_scale_max), "--sv3d_scale_schedule", a.sv3d_scale_schedule,
            "--scale_k", str(a.scale_k)]
    if a.azimuths_deg is not None:
        args += ["--azimuths_deg", *map(str, _values(a.azimuths_deg))]
    if a.image_frame_ratio is not None:
        args += ["--image_frame_ratio", str(a.image_frame_ratio)]
    if a.device is not None:
        args += ["--device", a.device]
    return args + rest


if __name__ == "__main__":
    sys.exit(sample_main(translate()))
