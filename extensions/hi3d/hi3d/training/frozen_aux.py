"""The Hi3D recipes' extra frozen models (aesthetic scorer, depth), loaded once per process from the ckpts/ folder.

The reference hard-codes them as `ckpts/ViT-L-14.pt`, `ckpts/metric_models/sac+logos+ava1-l14-linearMSE.pth` and
`ckpts/dpt_hybrid_384.pt`; here the folder is `$HI3D_CKPT_DIR` (default `ckpts`).
"""

from __future__ import annotations

import os
from typing import Dict, Optional

import torch

_CACHE: Dict[str, torch.nn.Module] = {}


def ckpt_dir() -> str:
    return os.environ.get("HI3D_CKPT_DIR", "ckpts")


def aesthetic_scorer(device: torch.device, directory: Optional[str] = None):
    from ..aesthetic import AestheticScorer
    from ..pipeline import AuxFiles

    key = f"aesthetic:{device}"
    if key not in _CACHE:
        aux = AuxFiles.from_dir(directory or ckpt_dir())
        _CACHE[key] = AestheticScorer.from_files(None, aux.clip_l, aux.aesthetic_mlp).to(device).requires_grad_(False)
    return _CACHE[key]


def depth_conditioner(device: torch.device, directory: Optional[str] = None):
    from ..depth import DepthConditioner, load_midas_dpt_hybrid
    from ..pipeline import AuxFiles
    from ..specs import stage_spec

    key = f"depth:{device}"
    if key not in _CACHE:
        aux = AuxFiles.from_dir(directory or ckpt_dir())
        spec = stage_spec("stage2")
        dpt = load_midas_dpt_hybrid(aux.midas)
        _CACHE[key] = DepthConditioner(dpt, spec.extra["depth_shuffle"], spec.extra["depth_scale_factor"]).to(device).requires_grad_(False)
    return _CACHE[key]


def clear() -> None:
    _CACHE.clear()
