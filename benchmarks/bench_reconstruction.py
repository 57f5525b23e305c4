"""Quality and time of the images-to-textured-mesh main job on procedural objects with known ground truth.

    python benchmarks/bench_reconstruction.py                          # bundled example + 2 unseen objects
    python benchmarks/bench_reconstruction.py --objects example --steps 300
    python benchmarks/bench_reconstruction.py --main-job                # time the README command as is

For each object (the bundled example, or `seed:N` = an unseen object of the same kind rendered by
scripts/make_example.py: 24 views at 128², 8 held-out views) it runs
`launch.py --config configs/reconstruction-example.yaml --train` in a subprocess, with the held-out
views as the test set, and prints a table:
- PSNR (dB) of the held-out views rendered on white (the `test/psnr` the system logs);
- Chamfer-L1 of the exported model.obj to the analytic surface (world units; object radius ~0.5),
  ½ (mesh->surface + surface->mesh) mean distances, 100k area-uniform samples each way;
- mean absolute texture colour error at true surface points (colour of the closest mesh point);
- wall and CPU seconds of the whole run (train + test + export) and the steps done.
Targets (issue 4): PSNR >= 30 dB, Chamfer-L1 <= 0.005, colour error <= 0.05; main job <= 10 min on 2 cores.
"""
from __future__ import annotations

import argparse
import csv
import glob
import os
import resource
import subprocess
import sys
import time
from typing import Any, Callable, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "scripts"))

CONFIG = os.path.join(REPO, "configs", "reconstruction-example.yaml")
EXAMPLE = os.path.join(REPO, "load", "example_primitives")


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_job(dataroot: str, out_root: str, tag: str, extra: list[str], config: str = CONFIG) -> tuple[str, float, float]:
    """launch.py --train on `dataroot`; returns (trial folder, wall seconds, CPU seconds)."""
    cmd = [sys.executable, os.path.join(REPO, "launch.py"), "--config", config, "--train",
           f"data.dataroot={dataroot}", f"exp_root_dir={out_root}", f"tag={tag}", "use_timestamp=false",
           "trainer.enable_progress_bar=false"] + extra
    cpu0, wall0 = children_cpu_seconds(), time.perf_counter()
    log_path = os.path.join(out_root, f"{tag}.log")
    os.makedirs(out_root, exist_ok=True)
    with open(log_path, "w") as log:
        result = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    wall, cpu = time.perf_counter() - wall0, children_cpu_seconds() - cpu0
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {result.returncode}); see {log_path}")
    from omegaconf import OmegaConf

    name = OmegaConf.load(config).get("name", "reconstruction-example")
    return os.path.join(out_root, name, tag), wall, cpu


def logged(trial: str, key: str) -> tuple[float, int]:
    """Last logged value of `key` in the trial's CSV log, and the last step seen."""
    value, step = float("nan"), 0
    for path in sorted(glob.glob(os.path.join(trial, "csv_logs", "*", "metrics.csv"))):
        with open(path) as fp:
            for row in csv.DictReader(fp):
                if row.get("step"):
                    step = max(step, int(float(row["step"])))
                if row.get(key):
                    value = float(row[key])
    return value, step


def evaluate_export(trial: str, scene_path: str):
    """(MeshQuality, face count) of the trial's last exported model.obj against the scene's analytic surface."""
    from procedural_scene import Scene
    from threestudio.models.exporters.mesh_io import load_world_mesh
    from reconstruction_metrics import evaluate_mesh

    exports = sorted(glob.glob(os.path.join(trial, "save", "it*-export", "model.obj")), key=os.path.getmtime)
    if not exports:
        raise RuntimeError(f"No exported mesh in {trial}/save/")
    mesh = load_world_mesh(exports[-1])  # files are y-up by default; the scene is in the z-up world
    with open(scene_path) as fp:
        scene = Scene.from_json(fp.read())
    return evaluate_mesh(mesh, scene), len(mesh.faces)


def evaluate(trial: str, scene_path: str) -> tuple[float, float, float, int]:
    quality, faces = evaluate_export(trial, scene_path)
    return quality.chamfer_l1, quality.accuracy, quality.color_error, faces


def dataset_for(name: str, out_root: str, example: str = EXAMPLE,
                make: Optional[Callable[[str, int], Any]] = None) -> str:
    """The bundled `example`, or for `seed:N` an unseen object rendered by `make(folder, N)` (default: a static
    random object, scripts/make_example.py) into out_root/data/seedN, once."""
    if name == "example":
        return example
    if not name.startswith("seed:"):
        raise SystemExit(f"Unknown object '{name}': use 'example' or 'seed:N'.")
    if make is None:
        from make_example import make_dataset
        from procedural_scene import random_scene

        def make(folder: str, seed: int) -> Any:
            return make_dataset(folder, random_scene(seed), seed=seed)

    seed = int(name.split(":")[1])
    folder = os.path.join(out_root, "data", f"seed{seed}")
    if not os.path.isfile(os.path.join(folder, "scene.json")):
        make(folder, seed)
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", default="example,seed:1,seed:2")
    parser.add_argument("--steps", type=int, default=None, help="trainer.max_steps (default: the config's)")
    parser.add_argument("--max-minutes", type=float, default=None, help="training time limit (trainer.max_time)")
    parser.add_argument("--out", default="/tmp/bench_reconstruction")
    parser.add_argument("--main-job", action="store_true", help="time the main-job command unchanged")
    parser.add_argument("overrides", nargs="*", help="extra key=value config overrides")
    args = parser.parse_args(argv)
    extra = list(args.overrides)
    if args.steps is not None:
        extra.append(f"trainer.max_steps={args.steps}")
    if args.max_minutes is not None:
        total = int(args.max_minutes * 60)
        extra.append(f"trainer.max_time=00:00:{total // 60:02d}:{total % 60:02d}")

    if args.main_job:
        trial, wall, cpu = run_job(EXAMPLE, args.out, "main-job", extra)
        videos = glob.glob(os.path.join(trial, "save", "it*-test.mp4"))
        meshes = glob.glob(os.path.join(trial, "save", "it*-export", "model.glb"))
        print(f"main job: {wall:.0f} s wall, {cpu:.0f} s CPU; video: {bool(videos)}, mesh: {bool(meshes)}; {trial}")
        return

    rows = []
    for name in [o.strip() for o in args.objects.split(",") if o.strip()]:
        data = dataset_for(name, args.out)
        tag = name.replace(":", "")
        trial, wall, cpu = run_job(data, args.out, tag, ["data.test_views=split"] + extra)
        psnr, step = logged(trial, "test/psnr")
        chamfer, accuracy, color, faces = evaluate(trial, os.path.join(data, "scene.json"))
        rows.append((name, step, psnr, chamfer, accuracy, color, faces, wall, cpu))
        print(f"done {name}: {rows[-1]}", flush=True)

    header = f"{'object':<10} {'steps':>6} {'PSNR dB':>8} {'Chamfer-L1':>11} {'mesh->gt':>9} {'colour err':>10} " \
             f"{'faces':>6} {'wall s':>7} {'CPU s':>7}"
    print("\n" + header + "\n" + "-" * len(header))
    for name, step, psnr, chamfer, accuracy, color, faces, wall, cpu in rows:
        print(f"{name:<10} {step:>6d} {psnr:>8.2f} {chamfer:>11.5f} {accuracy:>9.5f} {color:>10.4f} {faces:>6d} "
              f"{wall:>7.0f} {cpu:>7.0f}")
    print("targets: PSNR >= 30, Chamfer-L1 <= 0.005, colour error <= 0.05")


if __name__ == "__main__":
    main()
