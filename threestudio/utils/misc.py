"""Small helpers shared across the toolkit."""
from __future__ import annotations

import gc
import hashlib
import importlib
import logging
import os
from typing import Any, Optional

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


# module -> None when it imported, else why not (probed once per process)
_CUDA_PACKAGE_ERRORS: dict[str, Optional[str]] = {}


def cuda_package_error(module: str) -> Optional[str]:
    """Why the optional CUDA package `module` cannot be used ("no CUDA device", "not installed", or the import
    error), None when it can. The import happens only here, lazily, and only on a CUDA machine."""
    if not torch.cuda.is_available():
        return "no CUDA device"
    if module not in _CUDA_PACKAGE_ERRORS:
        try:
            importlib.import_module(module)
            _CUDA_PACKAGE_ERRORS[module] = None
        except ModuleNotFoundError as error:
            _CUDA_PACKAGE_ERRORS[module] = "not installed" if error.name == module else f"{type(error).__name__}: {error}"
        except Exception as error:  # noqa: BLE001 - a broken build raises anything (OSError, ImportError, ...)
            _CUDA_PACKAGE_ERRORS[module] = f"{type(error).__name__}: {error}"
    return _CUDA_PACKAGE_ERRORS[module]


def cuda_package_available(module: str, fallback: str = "the pure-PyTorch path") -> bool:
    """True when CUDA is usable and the optional CUDA package `module` (tinycudann, nerfacc, nvdiffrast)
    imports. On a CUDA machine where it does not, says once why and what runs instead."""
    error = cuda_package_error(module)
    if error is None:
        return True
    if error != "no CUDA device" and module not in _REPORTED:
        _REPORTED.add(module)
        logging.getLogger(__name__).warning(
            "%s is unavailable on this CUDA machine (%s); using %s instead, which is slower. "
            "`python -m threestudio.doctor` lists the fixes.", module, error, fallback)
    return False


_REPORTED: set[str] = set()
