"""Original MVDream state dict -> diffusers UNet / AutoencoderKL / transformers CLIPTextModel state dicts.

The LDM UNet, LDM VAE and OpenCLIP / OpenAI-CLIP text conversions are diffusers' single-file helpers; this module
adds the camera MLP mapping, sizes (ldm_config.py) and an account of every checkpoint tensor.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Dict, List, Optional, Sequence

import torch
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
    create_unet_diffusers_config_from_ldm,
    create_vae_diffusers_config_from_ldm,
)

from .checkpoint import (
    HF_CLIP_PREFIX,
    OPEN_CLIP_PREFIX,
    SCHEDULE_BUFFERS,
    UNET_PREFIX,
    VAE_PREFIX,
    MVDreamCheckpointError,
    StateDict,
)
from .ldm_config import attention_heads, infer_unet_params, infer_vae_ddconfig, text_encoder_spec

logger = logging.getLogger(__name__)

CAMERA_TO_DIFFUSERS = {
    "camera_embed.0.weight": "class_embedding.linear_1.weight",
    "camera_embed.0.bias": "class_embedding.linear_1.bias",
    "camera_embed.2.weight": "class_embedding.linear_2.weight",
    "camera_embed.2.bias": "class_embedding.linear_2.bias",
}


COMPONENTS = ("unet", "vae", "text_encoder")


@dataclass
class ConvertedCheckpoint:
    """Diffusers configs and state dicts for the models that were asked for (None/empty for the others), the
    schedule, and what was not loaded (and why)."""

    unet_config: Optional[Dict[str, Any]]
    unet_state: StateDict
    vae_config: Optional[Dict[str, Any]]
    vae_state: StateDict
    text_spec: Optional[Dict[str, Any]]
    text_state: StateDict
    schedule: Dict[str, Any]
    unused: Dict[str, str] = field(default_factory=dict)


def _strip(state_dict: StateDict, prefix: str) -> StateDict:
    # keys first: a lazy state dict reads only the tensors of this prefix
    return {k[len(prefix) :]: state_dict[k] for k in state_dict if k.startswith(prefix)}


def _check_count(component: str, n_source: int, converted: StateDict, expected: int) -> None:
    # Diffusers' helpers map keys by string rules and silently skip what they do not know. Each source tensor
    # must land exactly once, so the converted count must equal the expected count.
    if len(converted) != expected:
        raise MVDreamCheckpointError(
            f"{component}: {n_source} checkpoint tensors became {len(converted)} model tensors, expected {expected}; "
            "the checkpoint layout is not the one MVDream releases."
        )


def convert_unet(state_dict: StateDict, original_config: Dict[str, Any]) -> tuple:
    """(diffusers config, state dict) of the multiview UNet; camera_embed.0/2 -> class_embedding.linear_1/2."""
    params = infer_unet_params(state_dict, original_config["model"]["params"]["unet_config"]["params"])
    patched = {"model": {"params": dict(original_config["model"]["params"])}}
    patched["model"]["params"]["unet_config"] = {"params": params}
    config = create_unet_diffusers_config_from_ldm(patched, state_dict)
    config["attention_head_dim"] = attention_heads(params)  # diffusers' name for the head *count* per level
    config["sample_size"] = int(params.get("image_size") or 32)
    source = _strip(state_dict, UNET_PREFIX)
    camera = {k: source.pop(k) for k in list(source) if k.startswith("camera_embed.")}
    # The helper reads LDM keys under 'model.diffusion_model.'; it must not see the camera MLP (an unknown name).
    converted = convert_ldm_unet_checkpoint({UNET_PREFIX + k: v for k, v in source.items()}, config)
    if camera:
        config["class_embed_type"] = "projection"
        config["projection_class_embeddings_input_dim"] = int(params["camera_dim"])
        converted.update({CAMERA_TO_DIFFUSERS[k]: v for k, v in camera.items()})
    _check_count("UNet", len(source) + len(camera), converted, len(source) + len(camera))
    return config, converted


def convert_vae(state_dict: StateDict, original_config: Dict[str, Any]) -> tuple:
    """(diffusers AutoencoderKL config, state dict); scaling factor from the YAML's scale_factor."""
    model_params = original_config["model"]["params"]
    first_stage = model_params["first_stage_config"]["params"]
    ddconfig = infer_vae_ddconfig(state_dict, first_stage["ddconfig"], first_stage.get("embed_dim"))
    patched = {"model": {"params": {**model_params, "first_stage_config": {"params": {"ddconfig": ddconfig}}}}}
    config = create_vae_diffusers_config_from_ldm(patched, state_dict)
    config["sample_size"] = int(ddconfig.get("resolution") or 256)
    # Keep only this checkpoint's VAE keys: the helper picks its prefix by scanning for known ones.
    source = {k: state_dict[k] for k in state_dict if k.startswith(VAE_PREFIX)}
    converted = convert_ldm_vae_checkpoint(source, config)
    _check_count("VAE", len(source), converted, len(source))
    return config, converted


def convert_text_encoder(state_dict: StateDict, cond_stage_config: Dict[str, Any] | None) -> tuple:
    """(spec, CLIPTextModel state dict, unused keys); the last block is dropped for 'penultimate' conditioning."""
    spec = text_encoder_spec(state_dict, cond_stage_config)
    last = spec["total_layers"] - 1
    unused: Dict[str, str] = {}
    if spec["layout"] == "open_clip":
        source = _strip(state_dict, OPEN_CLIP_PREFIX)
        block = f"transformer.resblocks.{last}."
        for key in list(source):
            reason = None
            if spec["layer"] == "penultimate" and key.startswith(block):
                reason = "last text block: MVDream conditions on the penultimate layer"
            elif key in ("text_projection", "logit_scale"):
                reason = "CLIP contrastive head: not used for conditioning"
            elif key == "attn_mask":
                reason = "causal mask buffer: rebuilt by CLIPTextModel"
            if reason:
                unused[OPEN_CLIP_PREFIX + key] = reason
                source.pop(key)
        # Re-prefixed so that diffusers' fixed SD 2 ignore list (keyed on 'cond_stage_model.model.') cannot drop
        # tensors behind our back; the helper then reads the width from text_model.config.
        stub = SimpleNamespace(config=SimpleNamespace(hidden_size=spec["hidden_size"]))
        converted = convert_open_clip_checkpoint(stub, {"text." + k: v for k, v in source.items()}, prefix="text.")
        n_in_proj = sum(k.endswith((".in_proj_weight", ".in_proj_bias")) for k in source)
        expected = len(source) + 2 * n_in_proj  # fused q/k/v projections split in three
    else:
        source = _strip(state_dict, HF_CLIP_PREFIX)
        block = f"text_model.encoder.layers.{last}."
        for key in list(source):
            reason = None
            if spec["layer"] == "penultimate" and key.startswith(block):
                reason = "last text block: conditioning uses the penultimate layer"
            elif key.endswith("position_ids"):
                reason = "position id buffer: rebuilt by CLIPTextModel"
            if reason:
                unused[HF_CLIP_PREFIX + key] = reason
                source.pop(key)
        converted = convert_ldm_clip_checkpoint({HF_CLIP_PREFIX + k: v for k, v in source.items()})
        expected = len(source)
    _check_count("text encoder", len(source), converted, expected)
    # transformers >= 5.6 flattened CLIPTextModel (no '.text_model' wrapper); the loader strips the prefix there.
    return spec, converted, unused


def check_schedule(state_dict: StateDict, model_params: Dict[str, Any]) -> Dict[str, Any]:
    """The training schedule from the YAML; the checkpoint's betas buffer, if any, must agree with it."""
    schedule = {
        "num_train_timesteps": int(model_params.get("timesteps", 1000)),
        "beta_start": float(model_params.get("linear_start", 0.00085)),
        "beta_end": float(model_params.get("linear_end", 0.012)),
        "prediction_type": {"eps": "epsilon", "v": "v_prediction"}[model_params.get("parameterization", "eps")],
        "scale_factor": float(model_params.get("scale_factor", 0.18215)),
    }
    betas = state_dict.get("betas")
    if betas is not None:
        n = schedule["num_train_timesteps"]
        expected = torch.linspace(math.sqrt(schedule["beta_start"]), math.sqrt(schedule["beta_end"]), n, dtype=torch.float64) ** 2
        if betas.shape != (n,) or not torch.allclose(betas.double(), expected, rtol=1e-4, atol=1e-7):
            raise MVDreamCheckpointError(
                "the checkpoint's 'betas' buffer is not the scaled-linear schedule of original_config "
                f"(timesteps={n}, linear_start={schedule['beta_start']}, linear_end={schedule['beta_end']}); "
                "pass the original_config the model was trained with."
            )
    return schedule


def convert_checkpoint(state_dict: StateDict, original_config: Dict[str, Any],
                       components: Sequence[str] = COMPONENTS) -> ConvertedCheckpoint:
    """Convert the requested components and account for every tensor; unknown leftovers are reported, not
    silently dropped. Tensors of components not asked for are neither read nor converted."""
    unknown = [c for c in components if c not in COMPONENTS]
    if unknown:
        raise ValueError(f"unknown component(s) {unknown}; choose from {list(COMPONENTS)}")
    model_params = original_config["model"]["params"]
    unet_config, unet_state = convert_unet(state_dict, original_config) if "unet" in components else (None, {})
    vae_config, vae_state = convert_vae(state_dict, original_config) if "vae" in components else (None, {})
    unused: Dict[str, str] = {}
    text_spec, text_state = None, {}
    if "text_encoder" in components:
        text_spec, text_state, unused = convert_text_encoder(state_dict, model_params.get("cond_stage_config"))
    schedule = check_schedule(state_dict, model_params)
    for name in SCHEDULE_BUFFERS:
        if name in state_dict:
            unused[name] = "diffusion schedule buffer: recomputed by the DDIM scheduler (betas checked)"
    prefixes = {"unet": (UNET_PREFIX,), "vae": (VAE_PREFIX,), "text_encoder": (OPEN_CLIP_PREFIX, HF_CLIP_PREFIX)}
    skipped = tuple(p for c in COMPONENTS if c not in components for p in prefixes[c])
    known = (UNET_PREFIX, VAE_PREFIX, OPEN_CLIP_PREFIX, HF_CLIP_PREFIX)
    leftovers: List[str] = []
    for key in state_dict:
        if skipped and key.startswith(skipped):
            unused[key] = "component not requested"
        elif not key.startswith(known) and key not in unused:
            leftovers.append(key)
    for key in leftovers:
        unused[key] = "not part of MVDream inference (unknown key)"
    if leftovers:
        logger.warning("ignored %d unknown checkpoint tensors, e.g. %s", len(leftovers), leftovers[:5])
    return ConvertedCheckpoint(unet_config, unet_state, vae_config, vae_state, text_spec, text_state, schedule, unused)
