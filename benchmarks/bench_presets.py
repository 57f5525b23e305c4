"""Memory presets: the estimated peak of each preset of each distillation recipe, and (CUDA) the command that
measures it.

    python benchmarks/bench_presets.py               # the estimate table (no model is built; seconds)
    python benchmarks/bench_presets.py --measure     # CUDA: also runs bench_sds_sv3d.py with each SV3D preset's plan

The estimate is threestudio/utils/memory_estimate.py's (measured per-unit figures, see its docstring); the table
is what `preset=...` resolves to for configs/mvdream-sd21.yaml and configs/sv3d-image-to-3d.yaml. Full-size
measured peaks need a GPU: the SV3D rows print the bench_sds_sv3d.py command of the same plan (grad frames, VAE
chunk, render and image size; that benchmark has no switch for block checkpointing or unbatched CFG, so the 24gb,
12gb and 8gb rows measure an upper bound).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

from omegaconf import OmegaConf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from threestudio.utils.config import load_config  # noqa: E402
from threestudio.utils.memory_estimate import GB, estimate_peak_bytes  # noqa: E402
from threestudio.utils.presets import PRESET_BUDGET_GB, PRESET_NAMES  # noqa: E402

RECIPES = {
    "mvdream": ("configs/mvdream-sd21.yaml", ["system.prompt_processor.prompt=x",
                                              "system.guidance.pretrained_model_name_or_path=x"]),
    "sv3d": ("configs/sv3d-image-to-3d.yaml", ["data.image_path=x", "system.guidance.pretrained_model_name_or_path=x"]),
}


def sv3d_measure_command(cfg: dict) -> list[str]:
    g = cfg["system"]["guidance"]
    return [sys.executable, os.path.join(REPO, "benchmarks", "bench_sds_sv3d.py"), "--image-size", str(g["image_size"]),
            "--render-size", str(cfg["data"]["orbit_height"]), "--grad-frames", str(g["grad_frames"]),
            "--vae-chunk", str(g["vae_chunk_size"])]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--measure", action="store_true", help="CUDA only: measure each SV3D preset's plan")
    args = parser.parse_args()
    print(f"{'recipe':<8} {'preset':<7} {'budget':>6} {'weights':>8} {'renderer':>9} {'VAE':>6} {'UNet':>6} "
          f"{'peak (est.)':>11}  GB")
    commands = []
    for family, (config, cli) in RECIPES.items():
        for preset in (None, *PRESET_NAMES):
            cfg = load_config(os.path.join(REPO, config), cli_args=cli + ([f"preset={preset}"] if preset else []))
            data = OmegaConf.to_container(OmegaConf.structured(cfg))
            parts = {k: v / GB for k, v in estimate_peak_bytes(data).items()}
            budget = PRESET_BUDGET_GB.get(preset, "-")
            print(f"{family:<8} {preset or 'config':<7} {budget:>6} {parts['weights']:>8.1f} {parts['renderer']:>9.1f} "
                  f"{parts['vae']:>6.1f} {parts['unet']:>6.1f} {parts['peak']:>11.1f}")
            if family == "sv3d":
                commands.append((preset or "config", sv3d_measure_command(data)))
    print("\nMeasured peaks need a GPU; the SV3D plans are measured by:")
    for name, cmd in commands:
        print(f"  {name:<7} {' '.join(os.path.relpath(c, REPO) if c.startswith(REPO) else c for c in cmd[1:])}")
    if args.measure:
        import torch

        if not torch.cuda.is_available():
            print("--measure needs CUDA; skipped.", file=sys.stderr)
            return 1
        for name, cmd in commands:
            print(f"\n== SV3D preset {name}", flush=True)
            subprocess.run(cmd, check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
