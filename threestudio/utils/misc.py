"""Small helpers shared across the toolkit."""
from __future__ import annotations

import gc
import hashlib
import importlib
import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

logger = logging.getLogger("threestudio")


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


# --------------------------------------------------------------------------- safe checkpoint reading
class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, unsafe, or does not fit what it is loaded into."""


def read_checkpoint(path: str, what: str = "checkpoint", mmap: bool = False) -> dict:
    """The dict stored in a checkpoint file, read without running any code from it.

    `.safetensors` files go through safetensors (returned as {"state_dict": tensors}); everything else
    through `torch.load(weights_only=True)`, which refuses pickled objects other than tensors and plain
    containers. Every failure is a CheckpointError naming the file and saying what to do.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"{what} '{path}' does not exist.")
    if os.path.isdir(path):
        raise CheckpointError(f"{what} '{path}' is a folder; give a checkpoint file (e.g. <trial>/ckpts/last.ckpt).")
    size = os.path.getsize(path)
    if size == 0:
        raise CheckpointError(f"{what} '{path}' is empty (0 bytes): its write never finished. "
                              "Use another checkpoint (e.g. an epoch=..-step=N.ckpt next to it).")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            return {"state_dict": dict(load_file(path, device="cpu"))}
        except Exception as e:  # noqa: BLE001 - safetensors raises several types for a corrupt header
            raise CheckpointError(f"{what} '{path}' ({size} bytes) is not a readable safetensors file "
                                  f"({type(e).__name__}: {e}); it is probably truncated or corrupt.") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and _is_zip(path))
    except Exception as e:  # noqa: BLE001 - torch raises many types for a broken or unsafe file
        message = str(e)
        # a GLOBAL opcode names a Python callable: the file holds objects whose unpickling could run code
        if "GLOBAL" in message or "Unsupported global" in message:
            raise CheckpointError(
                f"{what} '{path}' holds pickled Python objects besides tensors; it is not loaded, because "
                "unpickling them could run code (torch.load(weights_only=True)). Re-save only its tensors "
                "(a state dict) from a trusted copy.") from None
        raise CheckpointError(f"{what} '{path}' ({size} bytes) is not a readable torch checkpoint "
                              f"({type(e).__name__}: {message.splitlines()[0] if message else ''}); it is "
                              "probably truncated or corrupt, or not a checkpoint at all.") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{what} '{path}' holds a {type(obj).__name__}, not a dict of tensors.")
    return obj


def _is_zip(path: str) -> bool:
    with open(path, "rb") as fp:
        return fp.read(4) == b"PK\x03\x04"


def is_plain_state_dict(obj: dict) -> bool:
    return bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def checkpoint_state_dict(obj: dict, path: str, what: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The tensors of a Lightning checkpoint ({'state_dict': ...}) or of a plain state dict."""
    state = obj.get("state_dict") if isinstance(obj.get("state_dict"), dict) else obj
    if not is_plain_state_dict(state):
        raise CheckpointError(f"{what} '{path}' holds no state dict of tensors (top-level keys: "
                              f"{', '.join(map(str, list(obj)[:8])) or 'none'}).")
    return state


def load_module_weights(path: str, module_name: str | None = None, ignore_modules: list[str] | None = None,
                        map_location: Any = "cpu") -> tuple[dict, int, int]:
    """(state dict, epoch, global step) of a checkpoint, optionally only the part under `module_name`
    (prefix stripped). Read weights-only; errors name the file."""
    ckpt = read_checkpoint(path, "weights file")
    state_dict = checkpoint_state_dict(ckpt, path, "weights file")
    out = {}
    for key, value in state_dict.items():
        if ignore_modules and any(key == m or key.startswith(m + ".") for m in ignore_modules):
            continue
        if module_name is not None:
            if not key.startswith(module_name + "."):
                continue
            key = key[len(module_name) + 1:]
        out[key] = value.to(map_location) if map_location is not None else value
    if module_name is not None and not out:
        prefixes = sorted({k.split(".")[0] for k in state_dict})
        raise CheckpointError(f"weights file '{path}' has no tensors under '{module_name}.'; its top-level "
                              f"modules are: {', '.join(prefixes)}.")
    return out, int(ckpt.get("epoch", 0) or 0), int(ckpt.get("global_step", 0) or 0)


def summarize_keys(keys: list[str], limit: int = 6) -> str:
    """'a.b (12 tensors), c.d.weight, ...' — keys grouped by their first two components."""
    groups: dict[str, int] = {}
    for key in keys:
        head = ".".join(key.split(".")[:2])
        groups[head] = groups.get(head, 0) + 1
    parts = [f"{head}.* ({n})" if n > 1 else head for head, n in list(groups.items())[:limit]]
    if len(groups) > limit:
        parts.append(f"... {len(groups) - limit} more")
    return ", ".join(parts)


@dataclass
class LoadReport:
    """What a partial load matched: the caller decides how loud to be about the rest."""

    matched: list[str]
    missing: list[str]
    unexpected: list[str]

    def describe(self) -> str:
        text = f"loaded {len(self.matched)} tensors"
        if self.missing:
            text += f"; {len(self.missing)} missing, kept as initialised: {summarize_keys(self.missing)}"
        if self.unexpected:
            text += f"; {len(self.unexpected)} unexpected, ignored: {summarize_keys(self.unexpected)}"
        return text


def compare_state_dicts(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], source: str,
                        target: str) -> LoadReport:
    """Which keys of `found` fit `expected`. Raises CheckpointError when nothing matches or shapes differ."""
    matched = [k for k in found if k in expected]
    bad_shapes = [f"{k} {tuple(found[k].shape)} vs {tuple(expected[k].shape)}" for k in matched
                  if tuple(found[k].shape) != tuple(expected[k].shape)]
    report = LoadReport(matched, [k for k in expected if k not in found], [k for k in found if k not in expected])
    if not matched:
        raise CheckpointError(
            f"{source}: none of its {len(found)} tensors match {target} (expected e.g. "
            f"{summarize_keys(list(expected), 3) or 'nothing'}; found e.g. {summarize_keys(list(found), 3)}). "
            "Nothing was loaded: this is a checkpoint of another model or configuration.")
    if bad_shapes:
        raise CheckpointError(f"{source}: {len(bad_shapes)} tensors have other shapes than in {target} "
                              f"(checkpoint vs model): {'; '.join(bad_shapes[:4])}. It was written with "
                              "another configuration.")
    return report


def load_partial_state_dict(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str, target: str,
                            ignore: Callable[[str], bool] = lambda key: False) -> LoadReport:
    """`module.load_state_dict(state, strict=False)` that logs what matched, what was missing and what was
    unexpected, and fails when nothing matched (rather than silently training from scratch)."""
    expected = {k: v for k, v in module.state_dict().items() if not ignore(k)}
    report = compare_state_dicts(expected, {k: v for k, v in state.items() if not ignore(k)}, source, target)
    module.load_state_dict({k: state[k] for k in report.matched}, strict=False)
    log = logger.warning if report.missing or report.unexpected else logger.info
    log("%s -> %s: %s", source, target, report.describe())
    return report


class NonFiniteError(RuntimeError):
    """A loss, a gradient or a parameter became NaN/inf: the run stops and no checkpoint is written."""


def nonfinite_tensors(state: dict[str, Any]) -> list[str]:
    """Names of the floating-point tensors in `state` that hold NaN or inf."""
    bad = []
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and value.numel():
            if not bool(torch.isfinite(value).all()):
                bad.append(key)
    return bad
