"""Reading original MVDream checkpoints (.pt / .ckpt / .safetensors) and telling them apart from other families."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Dict, Iterator, Mapping, Union

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
OPEN_CLIP_PREFIX = "cond_stage_model.model."
HF_CLIP_PREFIX = "cond_stage_model.transformer."
CAMERA_KEYS = tuple(f"{UNET_PREFIX}camera_embed.{i}.{p}" for i in (0, 2) for p in ("weight", "bias"))

# The 12 diffusion-schedule buffers LatentDiffusionInterface registers (betas and quantities derived from them).
SCHEDULE_BUFFERS = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)

_DOWNLOAD_HINT = (
    "The released weights are sd-v2.1-base-4view.pt and sd-v1.5-4view.pt on https://huggingface.co/MVDream/MVDream; "
    "download one and pass its local path."
)

StateDict = Dict[str, torch.Tensor]


class MVDreamCheckpointError(ValueError):
    """A checkpoint file that cannot be loaded as MVDream (wrong family, corrupt, incomplete)."""


def read_state_dict(path: Union[str, os.PathLike]) -> StateDict:
    """The tensors of an original-layout checkpoint; `.pt`/`.ckpt` are unpickled with `weights_only=True`.

    Both formats are read lazily (memory-mapped zip archives, `LazySafetensors`): a tensor's bytes are read
    when it is used, so converting some components reads only theirs."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"MVDream checkpoint not found: '{path}'. {_DOWNLOAD_HINT}")
    if path.is_dir():
        raise MVDreamCheckpointError(
            f"'{path}' is a directory. from_single_file() reads one checkpoint file (.pt, .ckpt, .safetensors); "
            "for a folder saved by save_pretrained() use MVDreamPipeline.from_pretrained()."
        )
    size = path.stat().st_size
    if path.suffix == ".safetensors":
        state = _read_safetensors(path, size)
    else:
        state = _read_torch(path, size)
    if isinstance(state, LazySafetensors):  # safetensors hold tensors only
        if not state:
            raise MVDreamCheckpointError(f"'{path}' holds no tensors.")
        return state  # type: ignore[return-value]
    if not isinstance(state, dict) or not state:
        raise MVDreamCheckpointError(f"'{path}' holds no state dict (got {type(state).__name__}).")
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise MVDreamCheckpointError(f"'{path}' holds no tensors.")
    return tensors


class LazySafetensors(Mapping):
    """A read-only state dict of a .safetensors file that reads each tensor when it is looked up, so loading
    only some components (e.g. the text encoder alone) reads only their bytes, as mmap does for .pt files."""

    def __init__(self, path: Path) -> None:
        from safetensors import safe_open

        self._path = str(path)
        with safe_open(self._path, framework="pt", device="cpu") as f:
            self._keys = list(f.keys())
        self._key_set = set(self._keys)

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._key_set:
            raise KeyError(key)
        from safetensors import safe_open

        with safe_open(self._path, framework="pt", device="cpu") as f:
            return f.get_tensor(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._key_set


def _read_safetensors(path: Path, size: int) -> StateDict:
    from safetensors import SafetensorError

    try:
        return LazySafetensors(path)  # type: ignore[return-value]
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise MVDreamCheckpointError(
            f"Cannot read '{path}' ({size} bytes) as safetensors: {exc}. The file is probably truncated or corrupt "
            f"(an interrupted download?); download it again. {_DOWNLOAD_HINT}"
        ) from exc


def _read_torch(path: Path, size: int) -> StateDict:
    is_zip = zipfile.is_zipfile(path)
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=is_zip)
    except Exception as exc:  # torch raises RuntimeError, EOFError, UnpicklingError, ... for damaged files
        message = str(exc)
        # a GLOBAL opcode names a Python callable; other weights-only failures (e.g. random bytes) are corruption
        if "GLOBAL" in message or "Unsupported global" in message:
            raise MVDreamCheckpointError(
                f"'{path}' contains pickled Python objects besides tensors, which are not loaded for safety "
                "(torch.load(weights_only=True)). Re-save only its state dict, e.g. "
                "torch.save({k: v for k, v in sd.items()}, 'clean.pt') in a trusted session, or convert it to "
                ".safetensors."
            ) from exc
        raise MVDreamCheckpointError(
            f"Cannot read '{path}' ({size} bytes) as a PyTorch checkpoint: {message.splitlines()[0] if message else exc!r}. "
            f"The file is probably truncated or corrupt (an interrupted download?); download it again. {_DOWNLOAD_HINT}"
        ) from exc
    # Lightning checkpoints wrap the weights in {"state_dict": ...}.
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    return obj


def check_mvdream_layout(state_dict: StateDict, source: str = "checkpoint", require_camera: bool = True) -> None:
    """Raise a clear error unless `state_dict` is an original-layout MVDream (or, without camera, plain SD) checkpoint."""
    keys = state_dict.keys()
    has = lambda prefix: any(k.startswith(prefix) for k in keys)  # noqa: E731
    if any(".time_stack." in k or ".time_mixer." in k for k in keys):
        raise MVDreamCheckpointError(
            f"{source} is a Stable Video Diffusion / SV3D checkpoint (generative-models layout with temporal "
            "layers), not MVDream. Load it with the sv3d package (SV3DPipeline.from_single_file) instead."
        )
    if has("conditioner.embedders."):
        raise MVDreamCheckpointError(
            f"{source} is a generative-models checkpoint (SDXL / SVD family: 'conditioner.embedders.*'), not "
            "MVDream, whose text encoder lives under 'cond_stage_model.*'."
        )
    if not has(UNET_PREFIX):
        if any(k.startswith(("down_blocks.", "up_blocks.", "conv_in.")) for k in keys):
            raise MVDreamCheckpointError(
                f"{source} is a diffusers-format model, not an original LDM checkpoint. "
                "Use MVDreamPipeline.from_pretrained(<folder>) for folders written by save_pretrained()."
            )
        sample = ", ".join(sorted(keys)[:3])
        raise MVDreamCheckpointError(
            f"{source} is not an MVDream checkpoint: no '{UNET_PREFIX}*' keys (first keys: {sample}). {_DOWNLOAD_HINT}"
        )
    for prefix, what in ((VAE_PREFIX, "autoencoder"), ("cond_stage_model.", "text encoder")):
        if not has(prefix):
            raise MVDreamCheckpointError(
                f"{source} has no {what} weights ('{prefix}*'); MVDream checkpoints hold UNet, VAE and text encoder. "
                "The file may be a UNet-only export."
            )
    if not has(OPEN_CLIP_PREFIX) and not has(HF_CLIP_PREFIX):
        raise MVDreamCheckpointError(
            f"{source} has a text encoder in an unknown layout (neither '{OPEN_CLIP_PREFIX}*' OpenCLIP nor "
            f"'{HF_CLIP_PREFIX}*' transformers CLIP)."
        )
    present = [k for k in CAMERA_KEYS if k in state_dict]
    if require_camera and len(present) != len(CAMERA_KEYS):
        missing = [k for k in CAMERA_KEYS if k not in state_dict]
        what = "no camera MLP" if not present else "an incomplete camera MLP"
        raise MVDreamCheckpointError(
            f"{source} has {what} (missing {', '.join(missing)}). MVDream's UNet needs it to condition on the "
            "camera; this looks like a plain Stable Diffusion checkpoint. Pass require_camera=False to load it as "
            "single-view Stable Diffusion."
        )
    if 0 < len(present) < len(CAMERA_KEYS):
        raise MVDreamCheckpointError(f"{source} has an incomplete camera MLP: only {', '.join(present)}.")
