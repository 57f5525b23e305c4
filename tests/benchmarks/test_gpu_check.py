"""benchmarks/gpu_check.sh without a GPU: the plan, the refusal, and the orbit-direction script on a tiny SV3D."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(*argv, timeout=300):
    return subprocess.run(list(argv), cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join(
                              [REPO, os.path.join(REPO, "extensions", "sv3d"), os.path.join(REPO, "extensions", "mvdream")])))


def test_list_fits_the_eight_minute_budget():
    result = _run(sys.executable, "benchmarks/gpu_check.py", "--list")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    names = [line.split()[0] for line in lines[:-1]]
    for required in ("env", "hashgrid", "estimator", "rasterizer", "fp16-priors", "sds-mvdream", "sds-sv3d", "sv3d-azimuth"):
        assert required in names
    budget = float(lines[-1].split("after")[1].split()[0])
    longest = max(int(line.split()[1]) for line in lines[:-1])
    assert budget + longest <= 8 * 60  # the last check to start still ends within 8 minutes


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a CPU machine")
def test_without_cuda_it_says_so_and_exits_2():
    result = _run("bash", "benchmarks/gpu_check.sh")
    assert result.returncode == 2 and "no CUDA device" in result.stderr


def test_unknown_check_is_named():
    result = _run(sys.executable, "benchmarks/gpu_check.py", "--checks", "hashgird", "--list")
    assert result.returncode == 2 and "unknown check(s) hashgird" in result.stderr


def test_turntable_direction_script_runs_on_a_tiny_sv3d(tmp_path):
    from omegaconf import OmegaConf
    from sv3d.tiny import tiny_config, write_tiny_checkpoint

    ckpt, yaml = tmp_path / "sv3d_p.safetensors", tmp_path / "sv3d_p.yaml"
    write_tiny_checkpoint(str(ckpt), "sv3d_p", seed=0)
    OmegaConf.save(tiny_config("sv3d_p"), str(yaml))
    result = _run(sys.executable, "benchmarks/sv3d_turntable_check.py", str(ckpt), "--original-config", str(yaml),
                  "--steps", "2", "--size", "64", "--compare-size", "16")
    # a random model turns either way; the script must run and vote on every frame but the input and back views
    assert result.returncode in (0, 1), result.stderr[-3000:]
    votes = result.stdout.splitlines()[0]
    plus, minus = int(votes.split("+a_i: ")[1].split(",")[0]), int(votes.split("-a_i: ")[1])
    assert plus + minus == 20 - 2  # 20 generated frames, minus the two within 20° of the back
