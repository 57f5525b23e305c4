"""`python -m threestudio.doctor`: backends and fallbacks on this CPU machine, config checks, exit status."""
import os
import subprocess
import sys

import torch

from threestudio.doctor import run

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_reconstruction_config_is_ready_on_the_cpu(capsys):
    code = run(["--config", os.path.join(REPO, "configs", "reconstruction-example.yaml"),
                f"data.dataroot={os.path.join(REPO, 'load', 'example_primitives')}"])
    out = capsys.readouterr().out
    assert code == 0, out
    if not torch.cuda.is_available():
        assert "none: everything runs on the CPU" in out
        assert "using the PyTorch occupancy grid" in out
        assert "using the NumPy UV rasterizer" in out
        # the hash grid falls back to the CPU kernel when it compiled, else to the PyTorch reference
        from threestudio.models.encodings import hash_grid_cpu

        kernel = hash_grid_cpu.load_kernel() is not None
        assert ("using the fused C++/OpenMP CPU kernel" if kernel else "using the pure-PyTorch reference") in out
        assert ("hash grid kernel       compiled" if kernel else "hash grid kernel       NOT compiled") in out
    assert "RAM" in out and "disk" in out
    assert "OK: nothing needed is missing." in out


def test_missing_data_is_a_needed_fix(tmp_path, capsys):
    code = run(["--config", os.path.join(REPO, "configs", "reconstruction-example.yaml"),
                f"data.dataroot={tmp_path / 'nope'}"])
    out = capsys.readouterr().out
    assert code == 1
    assert f"data.dataroot: '{tmp_path / 'nope'}' does not exist." in out


def test_mvdream_config_without_checkpoint_fails_with_the_fix(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "threestudio.doctor", "--config",
                           os.path.join(REPO, "configs", "mvdream-sd21.yaml"), "system.prompt_processor.prompt=a cat",
                           "preset=12gb"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stdout
    assert "== Fixes needed" in out
    assert ("system.guidance.pretrained_model_name_or_path is not set: give the checkpoint's local path, e.g. "
            "system.guidance.pretrained_model_name_or_path=/path/to/model") in out
    # the interpolated prompt_processor copy of the key is not reported twice
    assert "system.prompt_processor.pretrained_model_name_or_path is not set" not in out
    assert "1 problem(s) must be fixed" in out
    assert "peak GPU memory (est.)    9.3 GB" in out or "peak GPU memory (est.) 9.3 GB" in out
