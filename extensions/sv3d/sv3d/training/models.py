"""The models of a fine-tuning run: source checkpoint -> recipe surgery -> trainable UNet (+ LoRA, checkpointing)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import List

import torch

from ..checkpoint import load_checkpoint
from ..config import ModelSpec, detect_version, shipped_config_path, spec_from_config
from ..loading import build_components
from ..unet import SV3DUNet
from .randomness import STREAM_INIT, keyed_generator
from .recipes import Recipe

logger = logging.getLogger(__name__)


@dataclass
class SourceModels:
    unet: SV3DUNet  # after the recipe's surgery
    vae: torch.nn.Module
    image_encoder: torch.nn.Module
    source_version: str
    source_spec: ModelSpec
    source_unet_keys: List[str]  # VideoUNet key names of the source (sgm layout, without prefix)


def load_source_models(pretrained: str, recipe: Recipe, seed: int = 0, original_config=None) -> SourceModels:
    """Load the source checkpoint (generative-models layout) and apply the recipe's surgery."""
    if not os.path.isfile(pretrained):
        raise FileNotFoundError(f"pretrained checkpoint {pretrained!r} does not exist (config key `pretrained`)")
    sd = load_checkpoint(pretrained)
    version = detect_version(sd, pretrained)
    recipe.check_source(version)
    spec = spec_from_config(original_config or shipped_config_path(version), version)
    unet, vae, image_encoder, _ = build_components(sd, spec)
    keys = [k[len("model.diffusion_model.") :] for k in sd if k.startswith("model.diffusion_model.")]
    del sd
    unet = recipe.build_unet(unet, version, keyed_generator(seed, STREAM_INIT, 0))
    vae.requires_grad_(False).eval()
    image_encoder.requires_grad_(False).eval()
    return SourceModels(unet, vae, image_encoder, version, spec, keys)


def add_lora(unet: torch.nn.Module, rank: int, alpha: float, dropout: float, target_modules, extra_trainable) -> List[str]:
    """Inject peft LoRA adapters in place; only the adapters and the `extra_trainable` sub-modules train.
    Returns the names of the trainable parameters."""
    from peft import LoraConfig, inject_adapter_in_model

    cfg = LoraConfig(r=int(rank), lora_alpha=float(alpha), lora_dropout=float(dropout), target_modules=list(target_modules))
    inject_adapter_in_model(cfg, unet)
    names = []
    for name, p in unet.named_parameters():
        train = "lora_" in name or any(name.startswith(m + ".") for m in extra_trainable)
        p.requires_grad_(train)
        if train:
            names.append(name)
    return names


def merged_lora_state_dict(unet: torch.nn.Module) -> dict:
    """State dict with every LoRA adapter merged into its base weight and the plain module names (peft's
    `merge()` does the arithmetic; the renaming of `<m>.base_layer.*` back to `<m>.*` is done here)."""
    import copy

    from peft.tuners.tuners_utils import BaseTunerLayer

    model = copy.deepcopy(unet)
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.merge()
    out = {}
    for k, v in model.state_dict().items():
        if "lora_" in k:
            continue
        out[k.replace(".base_layer.", ".")] = v
    return out


def set_trainable(unet: torch.nn.Module, freeze_spatial: bool, freeze_temporal: bool) -> None:
    """Full fine-tuning, optionally with the spatial or the temporal layers frozen (as the reference's flags)."""
    for name, p in unet.named_parameters():
        temporal = "temporal" in name or "time_pos_embed" in name or "time_mixer" in name
        p.requires_grad_(not ((temporal and freeze_temporal) or (not temporal and freeze_spatial)))
