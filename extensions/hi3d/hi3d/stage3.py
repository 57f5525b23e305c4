"""Stage 3 (ours; never released by Hi3D): the refined orbit -> textured mesh through the toolkit's reconstruction.

hi3d does not import the toolkit: it writes the orbit as a NeRF-style folder (frames/NNN.png on white +
transforms.json) and runs `python launch.py --config <reconstruction config> --train ...` as a subprocess.
The 16 views' camera distance and field of view are not in Hi3D's code (SyncDreamer-style renders): options.
"""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

DEFAULT_CONFIG = os.path.join("configs", "reconstruction-example.yaml")
REFINE_CONFIG = os.path.join("configs", "reconstruction-refine.yaml")


def find_launch(launch: Optional[str] = None) -> str:
    """launch.py: the given path, else ./launch.py, else the toolkit checkout this package lives in."""
    candidates = [launch] if launch else [os.path.join(os.getcwd(), "launch.py"),
                                          str(Path(__file__).resolve().parents[3] / "launch.py")]
    for c in candidates:
        if c and os.path.isfile(c):
            return os.path.abspath(c)
    raise FileNotFoundError(
        f"stage 3 runs the toolkit's launch.py, which was not found ({', '.join(str(c) for c in candidates)}): "
        "pass --launch /path/to/launch.py"
    )


def free_tag(out_dir: str, base: str) -> str:
    """`base`, or `base-2`, `base-3` ...: the first whose trial folder does not exist (the launcher never overwrites
    a trial, and neither does a redone stage 3)."""
    tag, n = base, 1
    while os.path.exists(os.path.join(out_dir, "hi3d", tag)):
        n += 1
        tag = f"{base}-{n}"
    return tag


def reconstruction_command(orbit_dir: str, out_dir: str, launch: str, config: Optional[str] = None,
                           steps: Optional[int] = None, elevation_deg: float = 0.0,
                           overrides: Sequence[str] = (), refine_from: Optional[str] = None,
                           tag: Optional[str] = None) -> List[str]:
    """launch.py command of the coarse reconstruction, or (refine_from = the coarse trial's last.ckpt) of the
    mesh-refinement stage (DMTet + rasterizer, configs/reconstruction-refine.yaml), tag `mesh` / `refined`."""
    root = os.path.dirname(launch)
    cfg = config or os.path.join(root, REFINE_CONFIG if refine_from else DEFAULT_CONFIG)
    if not os.path.isfile(cfg):
        raise FileNotFoundError(f"reconstruction config {cfg!r} does not exist")
    cmd = [sys.executable, launch, "--config", os.path.abspath(cfg), "--train",
           f"data.dataroot={os.path.abspath(orbit_dir)}", "data.convention=transforms", "data.key_background=white",
           f"data.eval_elevation_deg={float(elevation_deg)}", f"exp_root_dir={os.path.abspath(out_dir)}",
           "name=hi3d", f"tag={tag or ('refined' if refine_from else 'mesh')}", "use_timestamp=false"]
    if refine_from:
        cmd.append(f"system.geometry_convert_from={os.path.abspath(refine_from)}")
    if steps is not None:
        cmd.append(f"trainer.max_steps={int(steps)}")
    return cmd + list(overrides)


def run_reconstruction(orbit_dir: str, out_dir: str, launch: Optional[str] = None, config: Optional[str] = None,
                       steps: Optional[int] = None, elevation_deg: float = 0.0, overrides: Sequence[str] = (),
                       log_path: Optional[str] = None, refine_from: Optional[str] = None) -> Dict[str, str]:
    """Run the reconstruction (or its mesh refinement); returns {'trial', 'mesh', 'glb', 'video'}."""
    if not os.path.isfile(os.path.join(orbit_dir, "transforms.json")):
        raise FileNotFoundError(f"{orbit_dir!r} has no transforms.json: run stage 1/2 first")
    launch = find_launch(launch)
    tag = free_tag(out_dir, "refined" if refine_from else "mesh")
    cmd = reconstruction_command(orbit_dir, out_dir, launch, config, steps, elevation_deg, overrides, refine_from, tag)
    os.makedirs(out_dir, exist_ok=True)
    log_path = log_path or os.path.join(out_dir, "refinement.log" if refine_from else "reconstruction.log")
    with open(log_path, "w") as log:
        log.write(" ".join(cmd) + "\n")
        log.flush()
        result = subprocess.run(cmd, cwd=os.path.dirname(launch), stdout=log, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        tail = open(log_path).read()[-3000:]
        raise RuntimeError(f"the reconstruction failed (exit {result.returncode}); log {log_path}:\n{tail}")
    trial = os.path.join(out_dir, "hi3d", tag)
    # it<N>-export, or it<N>.<k>-export when a step was exported again (the earlier export is kept)
    exports = sorted(glob.glob(os.path.join(trial, "save", "it*-export")),
                     key=lambda p: [int(n) for n in re.findall(r"\d+", os.path.basename(p))])
    videos = sorted(glob.glob(os.path.join(trial, "save", "it*-test.mp4")))
    if not exports:
        raise RuntimeError(f"the reconstruction finished without an export folder in {trial}/save; log {log_path}")
    return {"trial": trial, "mesh": os.path.join(exports[-1], "model.obj"), "glb": os.path.join(exports[-1], "model.glb"),
            "video": videos[-1] if videos else ""}
