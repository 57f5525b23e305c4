"""Alias with the spelling of the original sampling script (and the MindONE SV3D example):

    python simple_video_sample.py --config configs/sv3d_u.yaml --ckpt sv3d_u.safetensors --image chair.png

The version is read from the config file name (sv3d_u, sv3d_p, svd, svd_xt, *_image_decoder).
"""

from __future__ import annotations

import argparse
import os
import sys

from sv3d.config import VERSIONS, shipped_config_path
from sv3d.sample import main as sample_main


def translate(argv=None) -> list:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="configs/<version>.yaml (shipped) or an original sgm YAML")
    p.add_argument("--ckpt", required=True)
    p.add_argument("--image", "--input_path", dest="image", required=True)
    p.add_argument("--output_folder", default=None)
    p.add_argument("--elevations_deg", type=float, nargs="+", default=None)
    p.add_argument("--azimuths_deg", type=float, nargs="+", default=None)
    p.add_argument("--num_steps", type=int, default=None)
    p.add_argument("--num_frames", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--decoding_t", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--image_frame_ratio", type=float, default=None)
    p.add_argument("--image_size", type=int, default=None, help="(extension) side of the SV3D input, default 576")
    a = p.parse_args(argv)
    version = os.path.splitext(os.path.basename(a.config))[0]
    if version not in VERSIONS:
        raise SystemExit(f"cannot tell the version from config name {a.config!r}; expected one of {', '.join(VERSIONS)}")
    config = a.config if os.path.isfile(a.config) else shipped_config_path(version)
    out = ["--version", version, "--config", config, "--checkpoint", a.ckpt, "--image", a.image,
           "--output_dir", a.output_folder or os.path.join("outputs", "simple_video_sample", version)]
    for flag, value in (("--steps", a.num_steps), ("--num_frames", a.num_frames), ("--seed", a.seed),
                        ("--decoding_t", a.decoding_t), ("--device", a.device), ("--image_frame_ratio", a.image_frame_ratio),
                        ("--image_size", a.image_size)):
        if value is not None:
            out += [flag, str(value)]
    if a.elevations_deg:
        out += ["--elevation", *map(str, a.elevations_deg)]
    if a.azimuths_deg:
        out += ["--azimuths", *map(str, a.azimuths_deg)]
    return out


if __name__ == "__main__":
    sys.exit(sample_main(translate()))
