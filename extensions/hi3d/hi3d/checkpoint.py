"""Reading Hi3D's released stage files (DeepSpeed dicts) and the auxiliary weight files, never executing pickles."""

from __future__ import annotations

import os
from typing import Dict

import torch

from sv3d.checkpoint import load_checkpoint

DEEPSPEED_KEY = "module"
DEEPSPEED_PREFIX = "module."


def is_torchscript_archive(path: str) -> bool:
    """A TorchScript zip (code/ and constants.pkl next to data.pkl): torch.load would hand it to torch.jit.load,
    which runs its code, so it is never given to torch.load here."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in z.namelist())


def load_weights_only(path: str, what: str) -> object:
    """torch.load(weights_only=True) with a message naming the file and what to do when it is refused."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what}: {path!r} does not exist")
    if is_torchscript_archive(path):
        raise ValueError(f"{what}: {path!r} is a TorchScript archive, not a state dict (its code is never run)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with context
        raise ValueError(
            f"{what}: {path!r} cannot be read as a weights-only torch file ({exc}); it holds pickled objects "
            "other than tensors. Nothing from it is executed: convert it to safetensors on a trusted machine, or "
            "pass a file in the released layout"
        ) from exc


def load_stage_checkpoint(path: str) -> Dict[str, torch.Tensor]:
    """Flat generative-models state dict of `first_stage.pt` / `second_stage.pt`.

    The released files are DeepSpeed module dicts: {'module': {'module.model.diffusion_model...': tensor, ...},
    ...}; the `module.` prefix is stripped. A plain sgm checkpoint (safetensors, or {'state_dict': ...}) is
    accepted too (e.g. the output of `hi3d.make_stage2_init`).
    """
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        return load_checkpoint(path)
    obj = load_weights_only(path, "Hi3D stage checkpoint")
    if isinstance(obj, dict) and DEEPSPEED_KEY in obj and isinstance(obj[DEEPSPEED_KEY], dict):
        module = obj[DEEPSPEED_KEY]
        bad = [k for k in module if not str(k).startswith(DEEPSPEED_PREFIX)]
        sd = {(k[len(DEEPSPEED_PREFIX):] if str(k).startswith(DEEPSPEED_PREFIX) else k): v for k, v in module.items()}
        if bad and len(bad) == len(module):
            sd = dict(module)  # a DeepSpeed dict saved from an unwrapped model: keys already in sgm layout
    elif isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        sd = dict(obj["state_dict"])
    elif isinstance(obj, dict):
        sd = dict(obj)
    else:
        raise ValueError(f"{path!r} is not a state dict (got {type(obj).__name__})")
    tensors = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if not any(k.startswith("model.diffusion_model.") for k in tensors):
        raise ValueError(
            f"{path!r} holds no 'model.diffusion_model.*' tensors (after removing DeepSpeed's 'module.' prefix): "
            "not a Hi3D stage checkpoint; pass ckpts/first_stage.pt or ckpts/second_stage.pt"
        )
    return tensors
