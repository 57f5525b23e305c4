"""The t2i command line end to end on the tiny checkpoint (module entry point and the scripts/t2i.py alias)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mvdream.t2i import main

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "t2i.py"


def test_cli_writes_grid_and_views(tmp_path, tiny_ckpt):
    out = tmp_path / "out"
    code = main(["--checkpoint", str(tiny_ckpt), "--prompt", "a chair", "--num_frames", "4", "--num_samples", "2",
                 "--steps", "2", "--size", "16", "--device", "cpu", "--output_dir", str(out)])
    assert code == 0
    grid = np.asarray(Image.open(out / "grid.png"))
    assert grid.shape == (2 * 16, 4 * 16, 3)
    view = np.asarray(Image.open(out / "sample1_view3.png"))
    np.testing.assert_array_equal(view, grid[16:, 48:])
    assert len(list(out.glob("sample*_view*.png"))) == 8


def test_cli_without_checkpoint_explains(monkeypatch, capsys):
    monkeypatch.delenv("MVDREAM_CHECKPOINT", raising=False)
    assert main(["--prompt", "x"]) == 2
    assert "huggingface.co/MVDream/MVDream" in capsys.readouterr().err


@pytest.mark.slow
def test_t2i_alias_with_upstream_spelling(tmp_path, tiny_ckpt):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(SCRIPT), "--num_frames", "4", "--ckpt_path", str(tiny_ckpt), "--text", "a lamp",
           "--camera_elev", "20", "--steps", "1", "--size", "16", "--device", "cpu", "--output_dir", str(tmp_path)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "a lamp, 3d asset" in result.stdout
    assert Image.open(tmp_path / "grid.png").size == (64, 16)
