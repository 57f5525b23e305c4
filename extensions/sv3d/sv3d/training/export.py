"""Exports of a trained UNet: a diffusers folder and one file in the generative-models layout.

The single file holds the trained VideoUNet under `model.diffusion_model.*` and the frozen modules of the source
checkpoint (CLIP image embedder, conditioning encoder, first stage) under their sgm names, re-indexed to the
export version's conditioner order, plus `model.yaml` (its sgm description), so that
`SV3DPipeline.from_single_file(file)` (and `python -m sv3d.sample --checkpoint file`) load it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Dict, Mapping, Optional

import torch
from omegaconf import OmegaConf

from ..checkpoint import load_checkpoint
from ..config import shipped_config_path, spec_from_config
from ..convert_unet import UNET_PREFIX, video_unet_state_dict_from_diffusers


def export_config(export_version: str, source_version: str, source_config: Optional[str] = None):
    """sgm YAML of the exported model: the export version's, with the source's first stage when they differ
    (e.g. SV3D_u fine-tuned from SVD-xt keeps SVD-xt's temporal decoder)."""
    cfg = OmegaConf.load(shipped_config_path(export_version))
    src_path = source_config or shipped_config_path(source_version)
    if spec_from_config(src_path, source_version).first_stage != spec_from_config(cfg, export_version).first_stage:
        src = OmegaConf.load(src_path)
        cfg.model.params.first_stage_config = src.model.params.first_stage_config
    return cfg


def single_file_state_dict(
    unet_sd: Mapping[str, torch.Tensor],
    source_unet_keys,
    source_path: str,
    source_version: str,
    export_version: str,
    source_config: Optional[str] = None,
    sgm_config=None,
) -> Dict[str, torch.Tensor]:
    """The full sgm-layout state dict of the trained model (UNet from `unet_sd`, the rest from the source file);
    `sgm_config` describes the exported model (default: `export_config(export_version, ...)`)."""
    cfg = sgm_config if sgm_config is not None else export_config(export_version, source_version, source_config)
    dst = spec_from_config(cfg, export_version)
    src = spec_from_config(source_config or shipped_config_path(source_version), source_version)
    out = {UNET_PREFIX + k: v.detach().to("cpu").contiguous() for k, v in video_unet_state_dict_from_diffusers(unet_sd, source_unet_keys).items()}
    rename = {
        f"conditioner.embedders.{src.clip_index}.": f"conditioner.embedders.{dst.clip_index}.",
        f"conditioner.embedders.{src.cond_frames_index}.": f"conditioner.embedders.{dst.cond_frames_index}.",
    }
    for k, v in load_checkpoint(source_path).items():
        if k.startswith("first_stage_model."):
            out[k] = v
        for old, new in rename.items():
            if k.startswith(old):
                out[new + k[len(old) :]] = v
    return out


def _atomic_dir(final: str):
    """A temporary sibling folder that replaces nothing: the caller renames it to `final` when complete."""
    if os.path.exists(final):
        raise FileExistsError(f"{final} exists; exports never overwrite (choose another output_dir)")
    os.makedirs(os.path.dirname(os.path.abspath(final)), exist_ok=True)
    return tempfile.mkdtemp(prefix=".tmp_export_", dir=os.path.dirname(os.path.abspath(final)))


def export_trained(
    out_dir: str,
    unet: torch.nn.Module,
    unet_sd: Mapping[str, torch.Tensor],
    vae: torch.nn.Module,
    image_encoder: torch.nn.Module,
    source_unet_keys,
    source_path: str,
    source_version: str,
    export_version: str,
    source_config: Optional[str] = None,
    sgm_config=None,
) -> Dict[str, str]:
    """Write `<out_dir>/diffusers/{unet,vae,image_encoder}`, `<out_dir>/model.safetensors` and `<out_dir>/model.yaml`.

    `unet` gives the config (its weights are taken from `unet_sd`, e.g. EMA or LoRA-merged weights).
    """
    from safetensors.torch import save_file

    tmp = _atomic_dir(out_dir)
    try:
        cfg = {k: v for k, v in dict(unet.config).items() if not k.startswith("_")}
        clean = type(unet)(**cfg)
        clean.load_state_dict({k: v.float() for k, v in unet_sd.items()}, strict=True)
        clean.save_pretrained(os.path.join(tmp, "diffusers", "unet"))
        vae.save_pretrained(os.path.join(tmp, "diffusers", "vae"))
        image_encoder.save_pretrained(os.path.join(tmp, "diffusers", "image_encoder"))
        if sgm_config is None:
            sgm_config = export_config(export_version, source_version, source_config)
        sd = single_file_state_dict(clean.state_dict(), source_unet_keys, source_path, source_version, export_version, source_config, sgm_config)
        save_file({k: v.contiguous() for k, v in sd.items()}, os.path.join(tmp, "model.safetensors"), metadata={"version": export_version})
        OmegaConf.save(sgm_config, os.path.join(tmp, "model.yaml"))
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {
        "diffusers": os.path.join(out_dir, "diffusers"),
        "single_file": os.path.join(out_dir, "model.safetensors"),
        "config": os.path.join(out_dir, "model.yaml"),
    }
