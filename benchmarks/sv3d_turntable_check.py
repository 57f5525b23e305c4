"""Which way does SV3D's orbit turn? A synthetic turntable against a real sv3d_u / sv3d_p checkpoint.

    python benchmarks/sv3d_turntable_check.py /path/to/sv3d_p.safetensors [--steps 25] [--size 576]

Renders the bundled procedural example (asymmetric, coloured primitives) from elevation 10° at azimuth 0 as the
input view, samples SV3D's 21-frame orbit from it, and compares every generated frame with our renders at
azimuth +a_i and -a_i (a_i = (i+1)·360/21, the orbit of `sv3d.cameras`). Prints, per direction, the frames it
matches better, and exits 0 when the orbit turns the way `sv3d.cameras` (and so the reconstruction configs)
assume, 1 otherwise. Needs CUDA for a full-size checkpoint (minutes on CPU per step).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "scripts"))
sys.path.insert(0, REPO)


def main() -> int:
    import torch
    from PIL import Image

    from procedural_scene import example_scene, render
    from sv3d import SV3DPipeline, orbit_azimuths_deg
    from sv3d.cameras import SV3D_CAMERA_DISTANCE, SV3D_FOV_DEG

    from threestudio.utils.ops import orbit_c2w

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--original-config", default=None, help="sgm YAML (default: the shipped one)")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--size", type=int, default=576)
    parser.add_argument("--compare-size", type=int, default=64)
    args = parser.parse_args()
    scene = example_scene()

    def camera(azimuth: float) -> np.ndarray:
        return orbit_c2w(torch.tensor([10.0]), torch.tensor([azimuth]), torch.tensor([SV3D_CAMERA_DISTANCE]))[0].numpy()

    def view(azimuth: float, size: int) -> np.ndarray:
        rgba = render(scene, camera(azimuth), size, SV3D_FOV_DEG, 1)
        return rgba[..., :3] * rgba[..., 3:] + (1 - rgba[..., 3:])  # on white, as SV3D's inputs

    rgba = render(scene, camera(0.0), args.size, SV3D_FOV_DEG, 1)
    image = Image.fromarray((rgba * 255).round().astype(np.uint8), "RGBA")  # alpha = the object mask
    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipe = SV3DPipeline.from_single_file(args.checkpoint, original_config=args.original_config).to(device, torch.float16 if device == "cuda" else None)
    out = pipe(image, num_steps=args.steps, elevations_deg=10.0, image_size=args.size)
    frames = out.frames if hasattr(out, "frames") else out[0]  # (21, 3, H, W) in [0, 1]
    frames = torch.as_tensor(frames).float().clamp(0, 1)
    frames = torch.nn.functional.interpolate(frames, size=(args.compare_size,) * 2, mode="area")
    frames = frames.permute(0, 2, 3, 1).cpu().numpy().astype(np.float64)
    azimuths = orbit_azimuths_deg(len(frames))
    votes = {"+": 0, "-": 0}
    for generated, azimuth in zip(frames[:-1], azimuths[:-1]):  # the last frame is the input view itself
        if abs(azimuth - 180.0) < 20:  # the back view looks alike either way
            continue
        errors = {sign: float(((generated - view(s * azimuth, args.compare_size)) ** 2).mean())
                  for sign, s in (("+", 1.0), ("-", -1.0))}
        votes[min(errors, key=errors.get)] += 1
    print(f"frames closer to azimuth +a_i: {votes['+']}, to -a_i: {votes['-']}")
    direction_ok = votes["+"] > votes["-"]
    if votes["+"] == votes["-"]:
        print("undecided: the generated frames match neither direction (an untrained model?)")
        return 1
    print("SV3D orbit turns as sv3d.cameras assumes" if direction_ok else
          "SV3D orbit turns the OTHER way: flip the azimuth sign in sv3d.cameras.orbit_azimuths_deg")
    return 0 if direction_ok else 1


if __name__ == "__main__":
    sys.exit(main())
