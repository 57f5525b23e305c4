"""Model sizes from the original LDM YAML, corrected by the tensor shapes of the checkpoint."""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import yaml

from .checkpoint import HF_CLIP_PREFIX, OPEN_CLIP_PREFIX, UNET_PREFIX, VAE_PREFIX, MVDreamCheckpointError, StateDict

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
SHIPPED_CONFIGS = {
    "sd-v2.1-base-4view": CONFIG_DIR / "sd-v2.1-base-4view.yaml",
    "sd-v1.5-4view": CONFIG_DIR / "sd-v1.5-4view.yaml",
}
# OpenCLIP and OpenAI CLIP text towers use 64-wide attention heads (ViT-H/14: 1024 = 16 x 64, ViT-L/14: 768 = 12 x 64).
TEXT_HEAD_WIDTH = 64

OriginalConfig = Union[str, os.PathLike, Dict[str, Any], None]


def default_config_name(state_dict: StateDict) -> str:
    """The shipped YAML that matches a checkpoint: SD 1.x text tower (transformers CLIP) or SD 2.x (OpenCLIP)."""
    if any(k.startswith(HF_CLIP_PREFIX) for k in state_dict):
        return "sd-v1.5-4view"
    return "sd-v2.1-base-4view"


def load_original_config(original_config: OriginalConfig, state_dict: StateDict) -> Dict[str, Any]:
    """The original YAML as a dict: a path, a shipped name, a dict (or OmegaConf), or None to pick a shipped one."""
    if original_config is None:
        original_config = SHIPPED_CONFIGS[default_config_name(state_dict)]
    elif isinstance(original_config, str) and original_config in SHIPPED_CONFIGS:
        original_config = SHIPPED_CONFIGS[original_config]
    if isinstance(original_config, (str, os.PathLike)):
        path = Path(original_config)
        if not path.is_file():
            raise FileNotFoundError(
                f"original_config '{path}' not found. Pass a YAML path, one of {sorted(SHIPPED_CONFIGS)}, or None."
            )
        with open(path, "r", encoding="utf-8") as handle:
            config = yaml.safe_load(handle)
    else:
        try:  # OmegaConf DictConfig
            from omegaconf import DictConfig, OmegaConf

            if isinstance(original_config, DictConfig):
                original_config = OmegaConf.to_container(original_config, resolve=True)
        except ImportError:  # pragma: no cover - omegaconf is a dependency
            pass
        config = copy.deepcopy(dict(original_config))
    try:
        params = config["model"]["params"]
        params["unet_config"]["params"]
        params["first_stage_config"]["params"]["ddconfig"]
    except (KeyError, TypeError) as exc:
        raise ValueError(
            "original_config is not an LDM model config: it needs model.params.unet_config.params and "
            "model.params.first_stage_config.params.ddconfig (see mvdream/configs/*.yaml)."
        ) from exc
    return config


def _indices(state_dict: StateDict, pattern: str) -> List[int]:
    regex = re.compile(pattern)
    return sorted({int(m.group(1)) for k in state_dict for m in [regex.match(k)] if m})


def _require(state_dict: StateDict, key: str) -> Any:
    if key not in state_dict:
        raise MVDreamCheckpointError(f"checkpoint is missing '{key}', which every MVDream checkpoint has.")
    return state_dict[key]


def infer_unet_params(state_dict: StateDict, params: Dict[str, Any]) -> Dict[str, Any]:
    """Copy of the YAML's unet params with every size that the tensors determine taken from the tensors."""
    p = dict(params)
    u = UNET_PREFIX
    conv_in = _require(state_dict, f"{u}input_blocks.0.0.weight")
    mc = int(conv_in.shape[0])
    p["in_channels"], p["model_channels"] = int(conv_in.shape[1]), mc
    p["out_channels"] = int(_require(state_dict, f"{u}out.2.weight").shape[0])

    # Walk the encoder: res blocks per level until a downsampler ('.0.op').
    levels: List[Dict[str, Any]] = [{"res": 0, "attn": False, "ch": mc}]
    for i in _indices(state_dict, rf"{re.escape(u)}input_blocks\.(\d+)\.")[1:]:
        if f"{u}input_blocks.{i}.0.op.weight" in state_dict:
            levels.append({"res": 0, "attn": False, "ch": levels[-1]["ch"]})
            continue
        levels[-1]["res"] += 1
        levels[-1]["ch"] = int(_require(state_dict, f"{u}input_blocks.{i}.0.out_layers.3.weight").shape[0])
        levels[-1]["attn"] |= f"{u}input_blocks.{i}.1.norm.weight" in state_dict
    res_counts = {lvl["res"] for lvl in levels}
    if len(res_counts) != 1 or 0 in res_counts:
        raise MVDreamCheckpointError(f"unsupported UNet: res blocks per level {[lvl['res'] for lvl in levels]}")
    if any(lvl["ch"] % mc for lvl in levels):
        raise MVDreamCheckpointError("unsupported UNet: level widths are not multiples of the base width")
    p["num_res_blocks"] = res_counts.pop()
    p["channel_mult"] = [lvl["ch"] // mc for lvl in levels]
    p["attention_resolutions"] = [2**i for i, lvl in enumerate(levels) if lvl["attn"]]

    attn2_k = sorted(k for k in state_dict if k.startswith(u) and k.endswith("attn2.to_k.weight"))
    if not attn2_k:
        raise MVDreamCheckpointError("checkpoint UNet has no cross-attention layers ('attn2.to_k.weight').")
    p["context_dim"] = int(state_dict[attn2_k[0]].shape[1])
    first_attn = attn2_k[0].split(".transformer_blocks.")[0]
    p["transformer_depth"] = len(_indices(state_dict, rf"{re.escape(first_attn)}\.transformer_blocks\.(\d+)\."))
    p["use_linear_in_transformer"] = state_dict[f"{first_attn}.proj_in.weight"].ndim == 2
    camera = state_dict.get(f"{u}camera_embed.0.weight")
    p["camera_dim"] = int(camera.shape[1]) if camera is not None else None
    for unsupported in ("num_classes", "adm_in_channels", "disable_self_attentions", "num_attention_blocks"):
        if p.get(unsupported) is not None:
            raise MVDreamCheckpointError(f"unsupported UNet option in original_config: {unsupported}")
        p.pop(unsupported, None)
    return p


def attention_heads(params: Dict[str, Any]) -> List[int]:
    """Heads per level, following the original: fixed head width (num_head_channels) or fixed head count."""
    mc, heads = params["model_channels"], []
    for mult in params["channel_mult"]:
        ch = mc * mult
        head_channels = params.get("num_head_channels", -1) or -1
        if head_channels > 0:
            if ch % head_channels:
                raise MVDreamCheckpointError(
                    f"UNet width {ch} is not a multiple of num_head_channels={head_channels} from original_config; "
                    "pass an original_config with the model's num_head_channels or num_heads."
                )
            heads.append(ch // head_channels)
        elif (params.get("num_heads", -1) or -1) > 0:
            heads.append(int(params["num_heads"]))
        else:
            raise MVDreamCheckpointError("original_config sets neither num_heads nor num_head_channels for the UNet.")
    return heads


def infer_vae_ddconfig(state_dict: StateDict, ddconfig: Dict[str, Any], embed_dim: Optional[int]) -> Dict[str, Any]:
    """Copy of the YAML's autoencoder ddconfig with the sizes taken from the tensors."""
    d, v = dict(ddconfig), VAE_PREFIX
    conv_in = _require(state_dict, f"{v}encoder.conv_in.weight")
    ch = int(conv_in.shape[0])
    d["ch"], d["in_channels"] = ch, int(conv_in.shape[1])
    down = _indices(state_dict, rf"{re.escape(v)}encoder\.down\.(\d+)\.")
    d["ch_mult"] = [int(_require(state_dict, f"{v}encoder.down.{i}.block.0.conv2.weight").shape[0]) // ch for i in down]
    d["num_res_blocks"] = len(_indices(state_dict, rf"{re.escape(v)}encoder\.down\.0\.block\.(\d+)\."))
    d["z_channels"] = int(_require(state_dict, f"{v}decoder.conv_in.weight").shape[1])
    d["out_ch"] = int(_require(state_dict, f"{v}decoder.conv_out.weight").shape[0])
    d["double_z"] = int(_require(state_dict, f"{v}encoder.conv_out.weight").shape[0]) == 2 * d["z_channels"]
    quant = int(_require(state_dict, f"{v}post_quant_conv.weight").shape[1])
    if any(".attn." in k for k in state_dict if k.startswith(f"{v}encoder.down.") or k.startswith(f"{v}decoder.up.")):
        raise MVDreamCheckpointError("unsupported autoencoder: attention inside down/up blocks (attn_resolutions).")
    if not d["double_z"] or quant != d["z_channels"] or (embed_dim is not None and embed_dim != quant):
        raise MVDreamCheckpointError(
            f"unsupported autoencoder: expected a KL autoencoder with embed_dim == z_channels, got z_channels="
            f"{d['z_channels']}, embed_dim={quant}, double_z={d['double_z']}."
        )
    return d


def text_encoder_spec(state_dict: StateDict, cond_stage_config: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """Text tower layout, sizes, output layer and tokenizer padding, from the key layout and tensor shapes."""
    params = dict((cond_stage_config or {}).get("params") or {})
    if any(k.startswith(OPEN_CLIP_PREFIX) for k in state_dict):
        o = OPEN_CLIP_PREFIX
        embed = _require(state_dict, f"{o}token_embedding.weight")
        layers = len(_indices(state_dict, rf"{re.escape(o)}transformer\.resblocks\.(\d+)\."))
        inter = int(_require(state_dict, f"{o}transformer.resblocks.0.mlp.c_fc.weight").shape[0])
        context = int(_require(state_dict, f"{o}positional_embedding").shape[0])
        spec = {"layout": "open_clip", "hidden_act": "gelu", "pad_token": "!"}  # OpenCLIP pads with id 0 ('!')
    else:
        t = HF_CLIP_PREFIX + "text_model."
        embed = _require(state_dict, f"{t}embeddings.token_embedding.weight")
        layers = len(_indices(state_dict, rf"{re.escape(t)}encoder\.layers\.(\d+)\."))
        inter = int(_require(state_dict, f"{t}encoder.layers.0.mlp.fc1.weight").shape[0])
        context = int(_require(state_dict, f"{t}embeddings.position_embedding.weight").shape[0])
        spec = {"layout": "hf_clip", "hidden_act": "quick_gelu", "pad_token": "<|endoftext|>"}
    layer = params.get("layer", "last")
    if layer not in ("last", "penultimate"):
        raise ValueError(f"unsupported text encoder layer '{layer}' in original_config (use 'last' or 'penultimate')")
    width = int(embed.shape[1])
    spec.update(
        vocab_size=int(embed.shape[0]),
        hidden_size=width,
        intermediate_size=inter,
        num_attention_heads=max(1, width // TEXT_HEAD_WIDTH),
        total_layers=layers,
        # "penultimate": run all blocks but the last, then the final layer norm (as the original).
        num_hidden_layers=layers - 1 if layer == "penultimate" else layers,
        max_position_embeddings=context,
        max_length=int(params.get("max_length", context)),
        layer=layer,
    )
    return spec
