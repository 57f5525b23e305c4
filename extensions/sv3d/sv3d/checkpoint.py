"""Reading original checkpoints (safetensors, or pickled .ckpt/.pt with weights_only=True)."""

from __future__ import annotations

import os
from typing import Dict

import torch


def load_checkpoint(path: str) -> Dict[str, torch.Tensor]:
    """Flat state dict of a checkpoint file; never executes pickled code."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"checkpoint {path!r} does not exist; pass the path of a released SV3D/SVD file "
            "(e.g. sv3d_u.safetensors, sv3d_p.safetensors, svd.safetensors, svd_xt.safetensors)"
        )
    if os.path.getsize(path) == 0:
        raise ValueError(f"checkpoint {path!r} is empty (0 bytes): the download or copy did not finish")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            return dict(load_file(path, device="cpu"))
        except Exception as exc:  # noqa: BLE001 - safetensors raises several types for a corrupt file
            raise ValueError(
                f"could not read checkpoint {path!r} as safetensors ({type(exc).__name__}: {exc}); the file is "
                "probably truncated or corrupt: download it again"
            ) from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with context
        raise ValueError(f"could not read checkpoint {path!r} as safetensors or a weights-only torch file: {exc}") from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"checkpoint {path!r} does not hold a state dict of tensors")
    return dict(obj)
