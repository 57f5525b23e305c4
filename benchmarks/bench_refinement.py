"""Mesh refinement fidelity: coarse NeRF run -> marching-cubes export vs. DMTet refinement of the same run.

    python benchmarks/bench_refinement.py                                  # bundled example, configs as shipped
    python benchmarks/bench_refinement.py --objects example,seed:1 --coarse-steps 1500 --refine-steps 300
    python benchmarks/bench_refinement.py --coarse data.height=64 --refine data.height=64   # extra overrides

For each procedural object with a known surface (see bench_reconstruction.py; held-out views as the test
set) it runs configs/reconstruction-example.yaml (coarse: NeRF, test PSNR, marching-cubes export), then
configs/reconstruction-refine.yaml resuming from that trial (DMTet + the rasterizer, test PSNR, export from
the refined mesh), and prints per stage: held-out PSNR, Chamfer-L1 and mean normal angular error of the
exported model.obj against the analytic surface, and wall / CPU seconds.
Targets (issue 16): refined Chamfer-L1 >= 30% lower, normal error at least halved, PSNR not lower,
coarse + refine <= 10 min on 2 cores.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "scripts"))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

from bench_reconstruction import children_cpu_seconds, dataset_for, evaluate_export, logged  # noqa: E402

COARSE = os.path.join(REPO, "configs", "reconstruction-example.yaml")
REFINE = os.path.join(REPO, "configs", "reconstruction-refine.yaml")


def launch(config: str, name: str, out_root: str, tag: str, extra: list[str]) -> tuple[str, float, float]:
    cmd = [sys.executable, os.path.join(REPO, "launch.py"), "--config", config, "--train", f"exp_root_dir={out_root}",
           f"tag={tag}", "use_timestamp=false", "trainer.enable_progress_bar=false", "data.test_views=split"] + extra
    cpu0, wall0 = children_cpu_seconds(), time.perf_counter()
    log_path = os.path.join(out_root, f"{name}-{tag}.log")
    os.makedirs(out_root, exist_ok=True)
    with open(log_path, "w") as log:
        result = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {result.returncode}); see {log_path}")
    return os.path.join(out_root, name, tag), time.perf_counter() - wall0, children_cpu_seconds() - cpu0


def quality(trial: str, scene_path: str) -> tuple[float, float, int]:
    q, faces = evaluate_export(trial, scene_path)
    return q.chamfer_l1, q.normal_error_deg, faces


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", default="example")
    parser.add_argument("--coarse-steps", type=int, default=None)
    parser.add_argument("--refine-steps", type=int, default=None)
    parser.add_argument("--coarse", nargs="*", default=[], help="extra key=value overrides of the coarse run")
    parser.add_argument("--refine", nargs="*", default=[], help="extra key=value overrides of the refine run")
    parser.add_argument("--out", default="/tmp/bench_refinement")
    parser.add_argument("--reuse-coarse", action="store_true",
                        help="refine the coarse trials already in --out (their time is then not measured)")
    args = parser.parse_args(argv)
    coarse_extra = list(args.coarse)
    refine_extra = list(args.refine)
    if args.coarse_steps:
        coarse_extra += [f"trainer.max_steps={args.coarse_steps}", f"trainer.val_check_interval={args.coarse_steps}",
                         f"checkpoint.every_n_train_steps={args.coarse_steps}"]
    if args.refine_steps:
        refine_extra += [f"trainer.max_steps={args.refine_steps}", f"trainer.val_check_interval={args.refine_steps}",
                         f"checkpoint.every_n_train_steps={args.refine_steps}"]
    print(f"# load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}", flush=True)
    rows = []
    for name in [o.strip() for o in args.objects.split(",") if o.strip()]:
        data = dataset_for(name, args.out)
        tag = name.replace(":", "")
        scene = os.path.join(data, "scene.json")
        coarse = os.path.join(args.out, "reconstruction-example", tag)
        if args.reuse_coarse and os.path.isfile(os.path.join(coarse, "ckpts", "last.ckpt")):
            c_wall = c_cpu = float("nan")
        else:
            coarse, c_wall, c_cpu = launch(COARSE, "reconstruction-example", args.out, tag,
                                           [f"data.dataroot={data}"] + coarse_extra)
        c_psnr, c_step = logged(coarse, "test/psnr")
        c_chamfer, c_normal, c_faces = quality(coarse, scene)
        rows.append((name, "coarse (MC)", c_step, c_psnr, c_chamfer, c_normal, c_faces, c_wall, c_cpu))
        print(f"done {rows[-1]}", flush=True)
        if args.reuse_coarse:  # a fresh refinement trial each time
            shutil.rmtree(os.path.join(args.out, "reconstruction-refine", tag), ignore_errors=True)
        refined, r_wall, r_cpu = launch(REFINE, "reconstruction-refine", args.out, tag,
                                        [f"data.dataroot={data}",
                                         f"system.geometry_convert_from={os.path.join(coarse, 'ckpts', 'last.ckpt')}"]
                                        + refine_extra)
        r_psnr, r_step = logged(refined, "test/psnr")
        r_chamfer, r_normal, r_faces = quality(refined, scene)
        rows.append((name, "refined (DMTet)", r_step, r_psnr, r_chamfer, r_normal, r_faces, r_wall, r_cpu))
        print(f"done {rows[-1]}", flush=True)

    header = f"| {'object':<8} | {'stage':<15} | {'steps':>5} | {'PSNR dB':>7} | {'Chamfer-L1':>10} | " \
             f"{'normal err deg':>14} | {'faces':>6} | {'wall s':>6} | {'CPU s':>6} |"
    print("\n" + header + "\n|" + "-" * (len(header) - 2) + "|")
    for name, stage, step, psnr, chamfer, normal, faces, wall, cpu in rows:
        print(f"| {name:<8} | {stage:<15} | {step:>5d} | {psnr:>7.2f} | {chamfer:>10.5f} | {normal:>14.2f} | "
              f"{faces:>6d} | {wall:>6.0f} | {cpu:>6.0f} |")
    print(f"\n| {'object':<8} | {'Chamfer refined/coarse':>22} | {'normal refined/coarse':>21} | "
          f"{'PSNR refined-coarse dB':>22} | {'coarse+refine wall s':>20} |")
    for coarse_row, refined_row in zip(rows[0::2], rows[1::2]):
        print(f"| {coarse_row[0]:<8} | {refined_row[4] / coarse_row[4]:>22.2f} | {refined_row[5] / coarse_row[5]:>21.2f} | "
              f"{refined_row[3] - coarse_row[3]:>+22.2f} | {coarse_row[7] + refined_row[7]:>20.0f} |")
    print("targets: refined Chamfer-L1 <= 0.7 x coarse, normal error <= 0.5 x coarse, PSNR >= coarse, "
          "coarse + refine <= 600 s")


if __name__ == "__main__":
    main()
