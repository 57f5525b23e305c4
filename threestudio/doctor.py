"""Environment check: `python -m threestudio.doctor [--config X.yaml] [key=value ...]`.

Reports torch and CUDA, which accelerated backends import and work (tinycudann, nerfacc, nvdiffrast) and which
pure-PyTorch path runs instead, whether the CPU kernels compiled, free RAM / VRAM / disk, and for a config: the
checkpoints at its configured paths with their detected family, its input data, and an estimate of peak GPU memory.
Ends with the fixes to apply; exit status 1 when something the config needs is missing, else 0.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

GB = 1e9
CHECKPOINT_KEYS = ("pretrained_model_name_or_path", "ckpt_path")
DATA_KEYS = ("dataroot", "image_path", "cond_image_path")


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    fixes: list[str] = field(default_factory=list)  # needed: the run cannot start without them
    advice: list[str] = field(default_factory=list)  # optional: faster or leaner runs

    def section(self, title: str) -> None:
        self.lines.append(f"\n== {title}")

    def item(self, name: str, value: str) -> None:
        self.lines.append(f"  {name:<22} {value}")


# ------------------------------------------------------------------------------------------ backends
def _probe_tinycudann() -> None:
    import tinycudann as tcnn

    enc = tcnn.Encoding(3, {"otype": "HashGrid", "n_levels": 2, "n_features_per_level": 2, "log2_hashmap_size": 8,
                            "base_resolution": 4, "per_level_scale": 2.0})
    enc(torch.rand(8, 3, device="cuda"))


def _probe_nerfacc() -> None:
    import nerfacc

    nerfacc.OccGridEstimator(roi_aabb=[-1, -1, -1, 1, 1, 1], resolution=8).to("cuda")


def _probe_nvdiffrast() -> None:
    import nvdiffrast.torch as dr

    ctx = dr.RasterizeCudaContext()
    tri = torch.tensor([[[-1.0, -1.0, 0.0, 1.0], [1.0, -1.0, 0.0, 1.0], [0.0, 1.0, 0.0, 1.0]]], device="cuda")
    dr.rasterize(ctx, tri, torch.tensor([[0, 1, 2]], dtype=torch.int32, device="cuda"), resolution=[8, 8])


BACKENDS: list[tuple[str, Callable[[], None], str, str]] = [
    ("tinycudann", _probe_tinycudann, "hash grid", "pip install git+https://github.com/NVlabs/tiny-cuda-nn/#subdirectory=bindings/torch"),
    ("nerfacc", _probe_nerfacc, "occupancy grid", "pip install nerfacc (built against your torch/CUDA)"),
    ("nvdiffrast", _probe_nvdiffrast, "texture rasterizer", "pip install git+https://github.com/NVlabs/nvdiffrast"),
]


def _fallback(kind: str) -> str:
    if kind == "hash grid":
        from threestudio.models.encodings import hash_grid_cpu

        return ("fused C++/OpenMP CPU kernel" if hash_grid_cpu.load_kernel() is not None
                else "pure-PyTorch reference hash grid")
    if kind == "occupancy grid":
        return "PyTorch occupancy grid (threestudio/models/renderers/occupancy_grid.py)"
    return "NumPy UV rasterizer (threestudio/models/exporters/texture_baking.py)"


def check_backends(report: Report, cuda: bool) -> None:
    report.section("Accelerated backends (optional; the pure-PyTorch path is the reference)")
    for module, probe, kind, install in BACKENDS:
        try:
            __import__(module)
        except Exception as e:  # noqa: BLE001 - any failure to import is reported with its text
            status = f"not importable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
            if cuda:
                report.advice.append(f"{module}: {install} for a faster {kind}.")
        else:
            if not cuda:
                status = "imports, but no CUDA device"
            else:
                try:
                    probe()
                    status = "imports and works on CUDA (used)"
                except Exception as e:  # noqa: BLE001
                    status = f"imports but fails on CUDA ({type(e).__name__}: {e})"
                    report.advice.append(f"{module}: rebuild it against torch {torch.__version__} / CUDA "
                                         f"{torch.version.cuda}: {install}.")
        used = "" if status.endswith("(used)") else f"; using the {_fallback(kind)}"
        report.item(module, status + used)


def check_cpu_kernels(report: Report) -> None:
    report.section("CPU kernels")
    from threestudio.models.encodings import hash_grid_cpu
    from threestudio.models.rasterization import available_backends

    lib = hash_grid_cpu.load_kernel()
    seconds = hash_grid_cpu.kernel.build_seconds
    if lib is not None:
        report.item("hash grid kernel", f"compiled (load/build {seconds:.1f} s)" if seconds else "compiled")
    else:
        report.item("hash grid kernel", f"NOT compiled: {hash_grid_cpu.kernel.error}")
        report.advice.append("CPU hash-grid kernel: install a C++ compiler with OpenMP and ninja "
                             "(apt-get install g++; pip install ninja) for a several-times faster CPU hash grid.")
    raster = available_backends()
    if raster["cpu"]:
        took = raster.get("cpu_build_seconds")
        report.item("rasterizer kernel", f"compiled (load/build {took:.1f} s)" if took else "compiled")
    else:
        report.item("rasterizer kernel", f"NOT compiled: {raster['cpu_error']}; mesh refinement uses the "
                                         "pure-PyTorch rasterizer (tens of times slower)")
        report.advice.append("CPU rasterizer kernel: install a C++ compiler with OpenMP and ninja "
                             "(apt-get install g++; pip install ninja) for mesh refinement on the CPU.")


# ------------------------------------------------------------------------------------------ resources
def check_resources(report: Report, cuda: bool, out_dir: str) -> dict[str, float]:
    import psutil

    report.section("Resources")
    mem = psutil.virtual_memory()
    report.item("RAM", f"{mem.available / GB:.1f} GB free of {mem.total / GB:.1f} GB")
    folder = out_dir
    while folder and not os.path.exists(folder):
        folder = os.path.dirname(folder)
    disk = shutil.disk_usage(folder or ".")
    report.item("disk", f"{disk.free / GB:.1f} GB free at {os.path.abspath(folder or '.')}")
    if disk.free < 2 * GB:
        report.advice.append(f"Less than 2 GB free on disk at {folder}: checkpoints and videos may not fit.")
    vram = {"total": 0.0, "free": 0.0}
    if cuda:
        free, total = torch.cuda.mem_get_info()
        vram = {"total": total / GB, "free": free / GB}
        report.item("VRAM", f"{vram['free']:.1f} GB free of {vram['total']:.1f} GB ({torch.cuda.get_device_name()})")
    return vram


# ------------------------------------------------------------------------------------------ config
def _walk(node: Any, prefix: str = ""):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, node


def load_config_for_doctor(path: str, cli: list[str], report: Report) -> Optional[dict]:
    """The resolved config as a dict; missing required values (`???`) are reported as fixes, not fatal."""
    from omegaconf import OmegaConf

    from threestudio.utils.config import ConfigError, load_config

    placeholder = "__doctor_missing__"
    try:
        raw = OmegaConf.merge(OmegaConf.load(path), OmegaConf.from_dotlist(cli))
    except Exception as e:  # noqa: BLE001
        report.fixes.append(f"{path}: cannot read the config ({e}).")
        return None
    # keys interpolating a missing value (`${system.guidance.pretrained_model_name_or_path}`) follow their target
    missing = sorted(k for k in OmegaConf.missing_keys(raw) if not OmegaConf.is_interpolation(
        OmegaConf.select(raw, k.rsplit(".", 1)[0]) if "." in k else raw, k.rsplit(".", 1)[-1]))
    for key in missing:
        if any(key.endswith(k) for k in CHECKPOINT_KEYS):
            report.fixes.append(f"{key} is not set: give the checkpoint's local path, e.g. {key}=/path/to/model "
                                "(nothing is downloaded).")
        else:
            report.fixes.append(f"{key} is required: add {key}=... to the command line.")
    try:
        cfg = load_config(path, cli_args=cli + [f"{k}={placeholder}" for k in missing])
    except ConfigError as e:
        report.fixes.append(f"config: {e}")
        return None
    data = OmegaConf.to_container(OmegaConf.structured(cfg))
    for key, value in list(_walk(data)):
        if value == placeholder:
            parent = data
            parts = key.split(".")
            for p in parts[:-1]:
                parent = parent[p]
            parent[parts[-1]] = None
    return data


def check_config(report: Report, path: str, cli: list[str], vram: dict[str, float], cuda: bool) -> None:
    from threestudio.utils.checkpoint_family import detect_family, expected_family
    from threestudio.utils.memory_estimate import estimate_peak_bytes, family_of, format_breakdown
    from threestudio.utils.presets import preset_for_memory

    report.section(f"Config {path}")
    cfg = load_config_for_doctor(path, cli, report)
    if cfg is None:
        return
    report.item("system", f"{cfg['system_type']} (data: {cfg['data_type']})")
    guidance_type = str(cfg.get("system", {}).get("guidance_type", ""))
    for key, value in _walk(cfg):
        leaf = key.rsplit(".", 1)[-1]
        if leaf in CHECKPOINT_KEYS and value and not key.startswith("system.prompt_processor"):
            value = os.path.expanduser(str(value))
            if not os.path.exists(value):
                report.item(key, f"MISSING: {value}")
                report.fixes.append(f"{key}: '{value}' does not exist; give the local path of the checkpoint.")
                continue
            try:
                family = detect_family(value)
            except Exception as e:  # noqa: BLE001 - any unreadable file is a problem to report
                report.item(key, f"{value}: UNRECOGNISED")
                report.fixes.append(f"{key}: '{value}' is not a checkpoint this recipe can use: {e}")
                continue
            want = expected_family(guidance_type) if key.startswith("system.guidance") else None
            ok = want is None or family.startswith(want)
            report.item(key, f"{value}: {family}" + ("" if ok else f" (WRONG: {guidance_type} needs {want})"))
            if not ok:
                report.fixes.append(f"{key}: '{value}' is a {family} checkpoint; {guidance_type} needs a {want} one.")
        elif leaf in DATA_KEYS and value and not key.startswith("system.guidance"):
            exists = os.path.exists(os.path.expanduser(str(value)))
            report.item(key, f"{value}" + ("" if exists else ": MISSING"))
            if not exists:
                report.fixes.append(f"{key}: '{value}' does not exist.")
    if family_of(str(cfg["system_type"])) is not None:
        parts = estimate_peak_bytes(cfg)
        preset = cfg.get("preset_applied")
        report.item("peak GPU memory (est.)", f"{parts['peak'] / GB:.1f} GB ({format_breakdown(parts)})"
                    + (f", preset={preset}" if preset else ""))
        if cuda and parts["peak"] / GB > vram["total"]:
            suggestion = preset_for_memory(vram["total"])
            report.advice.append(f"The estimated peak ({parts['peak'] / GB:.1f} GB) exceeds this GPU's "
                                 f"{vram['total']:.0f} GB: add preset={suggestion}.")
        if not cuda:
            report.advice.append("No CUDA: this distillation recipe runs on the CPU, hours per hundred steps at full "
                                 "size; use a GPU for real runs.")


def run(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m threestudio.doctor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=None, help="a config to check (checkpoints, data, memory)")
    args, cli = parser.parse_known_args(argv)
    for arg in cli:
        if "=" not in arg:
            parser.error(f"unexpected argument '{arg}' (overrides are key=value)")
    report = Report()
    cuda = torch.cuda.is_available()
    report.section("Python and torch")
    report.item("python", sys.version.split()[0])
    report.item("torch", f"{torch.__version__} (CUDA build: {torch.version.cuda or 'none'})")
    report.item("CUDA device", f"{torch.cuda.device_count()} x {torch.cuda.get_device_name()}" if cuda else
                "none: everything runs on the CPU")
    check_backends(report, cuda)
    check_cpu_kernels(report)
    out_dir = next((a.split("=", 1)[1] for a in cli if a.startswith("exp_root_dir=")), "outputs")
    vram = check_resources(report, cuda, out_dir)
    if args.config:
        check_config(report, args.config, cli, vram, cuda)
    print("\n".join(report.lines).lstrip("\n"))
    if report.advice:
        print("\n== Suggestions")
        for line in report.advice:
            print(f"  - {line}")
    if report.fixes:
        print("\n== Fixes needed")
        for line in report.fixes:
            print(f"  - {line}")
        print(f"\n{len(report.fixes)} problem(s) must be fixed before this run can start.")
        return 1
    print("\nOK: nothing needed is missing.")
    return 0


if __name__ == "__main__":
    sys.exit(run())
