"""Which model family a checkpoint on disk belongs to, from tensor names and shapes only (no model is built).

safetensors files are read from their header (meta tensors, nothing loaded); `.pt`/`.ckpt` zip files are
memory-mapped with `weights_only=True`, so only the pickled index is read. The detection itself is the model
packages' own: `sv3d.detect_version` and `mvdream`'s layout check.
"""
from __future__ import annotations

import json
import os
from typing import Mapping

import torch

_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                       "U8": torch.uint8, "BOOL": torch.bool}


def read_tensor_index(path: str) -> Mapping[str, torch.Tensor]:
    """name -> tensor with the stored shape and dtype (meta tensors for safetensors, mmapped ones for torch zips)."""
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        out = {}
        with safe_open(path, framework="pt") as f:
            for key in f.keys():
                part = f.get_slice(key)
                out[key] = torch.empty(part.get_shape(), dtype=_SAFETENSORS_DTYPES.get(part.get_dtype(), torch.float32),
                                       device="meta")
        return out
    from mvdream.checkpoint import read_state_dict  # weights_only=True, mmap for zip files

    return read_state_dict(path)


def detect_family(path: str) -> str:
    """'sv3d_u' / 'sv3d_p' / 'svd' / 'svd_xt' / 'mvdream (sd-v2.1-base-4view)' / ... for a checkpoint file or a
    save_pretrained folder. ValueError (with the packages' explanation) when it is none of those."""
    path = os.path.expanduser(path)
    if os.path.isdir(path):
        index = os.path.join(path, "model_index.json")
        if not os.path.isfile(index):
            raise ValueError(f"'{path}' is a folder without model_index.json (not a saved pipeline).")
        with open(index) as fp:
            name = json.load(fp).get("_class_name", "unknown")
        return {"MVDreamPipeline": "mvdream (diffusers folder)", "SV3DPipeline": "sv3d (diffusers folder)"}.get(
            name, f"diffusers folder of {name}")
    state = read_tensor_index(path)
    from sv3d.config import detect_version

    try:
        return detect_version(state, path)
    except ValueError as sv3d_error:
        from mvdream.checkpoint import MVDreamCheckpointError, check_mvdream_layout
        from mvdream.ldm_config import default_config_name

        try:
            check_mvdream_layout(state, source=f"'{path}'")
        except MVDreamCheckpointError as mvdream_error:
            raise ValueError(f"{sv3d_error}; {mvdream_error}") from None
        return f"mvdream ({default_config_name(state)})"


def expected_family(guidance_type: str) -> str | None:
    """The family prefix a guidance module needs ('mvdream', 'sv3d'), None when it needs no checkpoint we know."""
    if guidance_type.startswith("mvdream"):
        return "mvdream"
    if guidance_type.startswith("sv3d"):
        return "sv3d"
    return None
