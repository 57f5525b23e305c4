"""Small helpers shared across the toolkit."""
from __future__ import annotations

import gc
import importlib
import hashlib
import os
from typing import Any

import torch


def get_rank() -> int:
    # Lightning sets these before the processes of a DDP run construct modules.
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if key in os.environ:
            return int(os.environ[key])
    return 0


def get_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    return torch.device("cpu")


def step_seed(seed: int, step: int, stream: str = "") -> int:
    """A seed derived from (seed, step, stream): the randomness of a step does not depend on history."""
    digest = hashlib.blake2b(f"{seed}:{step}:{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


def cleanup() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def load_module_weights(path: str, module_name: str | None = None, ignore_modules: list[str] | None = None,
                        map_location: Any = "cpu") -> tuple[dict, int, int]:
    """Load a Lightning checkpoint's state dict, optionally the part under `module_name`."""
    ckpt = torch.load(path, map_location=map_location, weights_only=False)
    state_dict = ckpt["state_dict"]
    out = {}
    for key, value in state_dict.items():
        if ignore_modules and any(key.startswith(m + ".") for m in ignore_modules):
            continue
        if module_name is not None:
            if not key.startswith(module_name + "."):
                continue
            key = key[len(module_name) + 1:]
        out[key] = value
    return out, ckpt.get("epoch", 0), ckpt.get("global_step", 0)


def cuda_package_available(module: str) -> bool:
    """True when CUDA is usable and the optional CUDA package `module` (tinycudann, nerfacc, nvdiffrast)
    imports. The import happens only here, lazily: CPU machines never import these packages."""
    if not torch.cuda.is_available():
        return False
    try:
        importlib.import_module(module)
    except Exception:  # noqa: BLE001 - a missing or a broken install both mean "not available"
        return False
    return True
