"""On a CPU machine the NeRF stack imports and runs without any CUDA-only package."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only import path")
def test_no_cuda_packages_imported_on_cpu(tmp_path):
    script = textwrap.dedent("""
        import sys, torch
        import threestudio
        from threestudio.utils.base import build_module
        import threestudio.models.geometry, threestudio.models.renderers
        import threestudio.models.materials, threestudio.models.backgrounds, threestudio.models.networks
        grid = {"otype": "HashGrid", "n_levels": 2, "n_features_per_level": 2, "log2_hashmap_size": 8,
                "base_resolution": 4, "per_level_scale": 2.0}
        geo = build_module("implicit-volume", {"pos_encoding_config": grid}, "g")
        mat = build_module("neural-radiance-material", {"input_feature_dims": 3}, "m")
        bg = build_module("neural-environment-map-background", {}, "b")
        r = build_module("nerf-volume-renderer", {"num_samples_per_ray": 32}, "r", geometry=geo, material=mat,
                         background=bg)
        r.train(); r.do_update_step(0, 0)
        rays_o = torch.tensor([-3.0, 0.0, 0.0]).expand(1, 2, 2, 3).contiguous()
        rays_d = torch.tensor([1.0, 0.0, 0.0]).expand(1, 2, 2, 3).contiguous()
        r(rays_o, rays_d, torch.zeros(1, 3))["comp_rgb"].sum().backward()
        bad = sorted(m for m in sys.modules if m.split(".")[0] in ("tinycudann", "nerfacc", "nvdiffrast"))
        print("IMPORTED:", bad)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=str(tmp_path),
                            env={**__import__("os").environ, "PYTHONPATH": _repo_root()})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "IMPORTED: []" in result.stdout


def _repo_root() -> str:
    import os

    import threestudio

    return os.path.dirname(os.path.dirname(os.path.abspath(threestudio.__file__)))


def test_unavailable_cuda_package_is_reported_once_with_the_reason_and_the_fallback(monkeypatch, tmp_path, caplog):
    from threestudio.utils import misc

    (tmp_path / "broken_cuda_ext.py").write_text("raise OSError('libcuda_ext.so: undefined symbol _Zfoo')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(misc, "_CUDA_PACKAGE_ERRORS", {})
    monkeypatch.setattr(misc, "_REPORTED", set())
    with caplog.at_level("WARNING", logger="threestudio.utils.misc"):
        assert not misc.cuda_package_available("broken_cuda_ext", "the CPU path")
        assert not misc.cuda_package_available("broken_cuda_ext", "the CPU path")
        assert not misc.cuda_package_available("no_such_cuda_package_xyz", "the PyTorch path")
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2  # once per package
    assert "broken_cuda_ext" in messages[0] and "undefined symbol _Zfoo" in messages[0] and "the CPU path" in messages[0]
    assert "no_such_cuda_package_xyz is unavailable on this CUDA machine (not installed); using the PyTorch path" \
        in messages[1]
    assert misc.cuda_package_error("broken_cuda_ext").startswith("OSError")


def test_without_cuda_nothing_is_probed_or_logged(monkeypatch, caplog):
    from threestudio.utils import misc

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level("WARNING"):
        assert not misc.cuda_package_available("tinycudann")
    assert misc.cuda_package_error("tinycudann") == "no CUDA device" and not caplog.records
