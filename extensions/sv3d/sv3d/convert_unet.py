"""generative-models `VideoUNet` state dict -> `SV3DUNet` (diffusers UNetSpatioTemporalConditionModel layout).

diffusers ships no single-file converter for the spatio-temporal UNet (its `single_file_utils` covers image
UNets only), so the renaming is written here. It is a pure function of the key names: the structure of both
models is identical, only the block indexing and the sub-module names differ.
"""

from __future__ import annotations

import re
from typing import Dict, List, Mapping, Optional, Sequence

import torch

UNET_PREFIX = "model.diffusion_model."

# resnet sub-modules: generative-models name -> diffusers name
_RESNET_RENAMES = [
    ("in_layers.0.", "norm1."),
    ("in_layers.2.", "conv1."),
    ("emb_layers.1.", "time_emb_proj."),
    ("out_layers.0.", "norm2."),
    ("out_layers.3.", "conv2."),
    ("skip_connection.", "conv_shortcut."),
]


def _rename_resnet(rest: str) -> str:
    """Key inside one VideoResBlock -> key inside diffusers' SpatioTemporalResBlock."""
    if rest.startswith("time_mixer."):
        return rest
    if rest.startswith("time_stack."):
        prefix, rest = "temporal_res_block.", rest[len("time_stack.") :]
    else:
        prefix = "spatial_res_block."
    for old, new in _RESNET_RENAMES:
        if rest.startswith(old):
            return prefix + new + rest[len(old) :]
    raise KeyError(rest)


def _rename_transformer(rest: str) -> str:
    """Key inside one SpatialVideoTransformer -> key inside diffusers' TransformerSpatioTemporalModel."""
    if rest.startswith("time_stack."):
        return "temporal_transformer_blocks." + rest[len("time_stack.") :]
    m = re.match(r"time_pos_embed\.([02])\.(.*)", rest)
    if m:
        return f"time_pos_embed.linear_{1 if m.group(1) == '0' else 2}.{m.group(2)}"
    return rest


def _is_transformer_key(rest: str) -> bool:
    return rest.split(".")[0] in ("norm", "proj_in", "proj_out", "transformer_blocks", "time_stack", "time_pos_embed", "time_mixer")


def unet_levels(unet_sd: Mapping[str, torch.Tensor]) -> Dict[str, object]:
    """Structure read from key names: number of levels, res blocks per level, levels with attention."""
    n_input = 1 + max(int(k.split(".")[1]) for k in unet_sd if k.startswith("input_blocks."))
    n_down = len({k.split(".")[1] for k in unet_sd if re.match(r"input_blocks\.\d+\.0\.op\.", k)})
    levels = n_down + 1
    per_level = n_input // levels  # res blocks + 1 (downsampler, or conv_in for level 0 bookkeeping)
    layers = per_level - 1
    attn_levels = []
    for lvl in range(levels):
        first = 1 + lvl * per_level
        attn_levels.append(f"input_blocks.{first}.1.proj_in.weight" in unet_sd)
    return {"levels": levels, "layers_per_block": layers, "attention": attn_levels}


def convert_video_unet_state_dict(unet_sd: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Rename every key of a VideoUNet state dict (without the `model.diffusion_model.` prefix).

    Raises KeyError on a key that has no place in the diffusers model, so nothing is silently dropped.
    """
    info = unet_levels(unet_sd)
    layers = int(info["layers_per_block"])
    levels = int(info["levels"])
    top = {
        "time_embed.0.": "time_embedding.linear_1.",
        "time_embed.2.": "time_embedding.linear_2.",
        "label_emb.0.0.": "add_embedding.linear_1.",
        "label_emb.0.2.": "add_embedding.linear_2.",
        "input_blocks.0.0.": "conv_in.",
        "out.0.": "conv_norm_out.",
        "out.2.": "conv_out.",
    }
    out: Dict[str, torch.Tensor] = {}
    for key, value in unet_sd.items():
        new = None
        for old, rep in top.items():
            if key.startswith(old):
                new = rep + key[len(old) :]
                break
        if new is None:
            m = re.match(r"input_blocks\.(\d+)\.(\d+)\.(.*)", key)
            if m:
                i, sub, rest = int(m.group(1)), int(m.group(2)), m.group(3)
                lvl, j = (i - 1) // (layers + 1), (i - 1) % (layers + 1)
                if j == layers:  # the downsampler closing a level
                    if sub != 0 or not rest.startswith("op."):
                        raise KeyError(key)
                    new = f"down_blocks.{lvl}.downsamplers.0.conv.{rest[3:]}"
                elif sub == 0:
                    new = f"down_blocks.{lvl}.resnets.{j}.{_rename_resnet(rest)}"
                elif sub == 1:
                    new = f"down_blocks.{lvl}.attentions.{j}.{_rename_transformer(rest)}"
            m = None if new else re.match(r"middle_block\.(\d)\.(.*)", key)
            if m:
                sub, rest = int(m.group(1)), m.group(2)
                new = (
                    f"mid_block.attentions.0.{_rename_transformer(rest)}"
                    if sub == 1
                    else f"mid_block.resnets.{sub // 2}.{_rename_resnet(rest)}"
                )
            m = None if new else re.match(r"output_blocks\.(\d+)\.(\d+)\.(.*)", key)
            if m:
                i, sub, rest = int(m.group(1)), int(m.group(2)), m.group(3)
                lvl, j = i // (layers + 1), i % (layers + 1)
                if sub == 0:
                    new = f"up_blocks.{lvl}.resnets.{j}.{_rename_resnet(rest)}"
                elif sub == 1 and _is_transformer_key(rest):
                    new = f"up_blocks.{lvl}.attentions.{j}.{_rename_transformer(rest)}"
                elif rest.startswith("conv.") and lvl < levels - 1:
                    new = f"up_blocks.{lvl}.upsamplers.0.{rest}"
        if new is None:
            raise KeyError(f"unexpected VideoUNet key {key!r}: no place for it in the diffusers model")
        out[new] = value
    return out


def unet_config_from_state_dict(
    unet_sd: Mapping[str, torch.Tensor],
    network_params: Optional[Mapping] = None,
    added_id_widths: Optional[Sequence[int]] = None,
    num_frames: int = 21,
) -> Dict[str, object]:
    """SV3DUNet config: channel sizes and depth from tensor shapes, head size from the sgm YAML."""
    params = dict(network_params or {})
    info = unet_levels(unet_sd)
    levels, layers = int(info["levels"]), int(info["layers_per_block"])
    per_level = layers + 1
    conv_in = unet_sd["input_blocks.0.0.weight"]
    channels: List[int] = []
    for lvl in range(levels):
        channels.append(int(unet_sd[f"input_blocks.{1 + lvl * per_level}.0.out_layers.3.weight"].shape[0]))
    attn = list(info["attention"])
    context_dim = None
    depth = 1
    for lvl in range(levels):
        if attn[lvl]:
            blk = f"input_blocks.{1 + lvl * per_level}.1."
            context_dim = int(unet_sd[blk + "transformer_blocks.0.attn2.to_k.weight"].shape[1])
            depth = 1 + max(int(k[len(blk) :].split(".")[1]) for k in unet_sd if k.startswith(blk + "transformer_blocks."))
            break
    head_channels = int(params.get("num_head_channels", 64))
    # generative-models: heads = channels // num_head_channels (never below one head for tiny test models)
    heads = tuple(max(1, c // head_channels) for c in channels)
    adm = int(unet_sd["label_emb.0.0.weight"].shape[1])
    widths = list(added_id_widths) if added_id_widths is not None else [256] * max(1, adm // 256)
    if sum(widths) != adm:
        raise ValueError(
            f"the checkpoint's vector conditioning is {adm} wide, but the config's embedders give {widths} "
            f"(sum {sum(widths)}); pass the matching original_config"
        )
    return {
        "in_channels": int(conv_in.shape[1]),
        "out_channels": int(unet_sd["out.2.weight"].shape[0]),
        "down_block_types": tuple(
            "CrossAttnDownBlockSpatioTemporal" if a else "DownBlockSpatioTemporal" for a in attn
        ),
        "up_block_types": tuple(
            "CrossAttnUpBlockSpatioTemporal" if a else "UpBlockSpatioTemporal" for a in reversed(attn)
        ),
        "block_out_channels": tuple(channels),
        "layers_per_block": layers,
        "cross_attention_dim": context_dim if context_dim is not None else int(params.get("context_dim", 1024)),
        "transformer_layers_per_block": depth,
        "num_attention_heads": heads,
        "addition_time_embed_dim": int(widths[0]),
        "projection_class_embeddings_input_dim": adm,
        "addition_time_embed_dims": tuple(int(w) for w in widths),
        "num_frames": int(num_frames),
    }


def unet_config_from_network_params(
    params: Mapping, added_id_widths: Sequence[int], num_frames: int = 21
) -> Dict[str, object]:
    """SV3DUNet config from the sgm YAML alone (no checkpoint): for building a randomly initialised model."""
    mc = int(params["model_channels"])
    mult = list(params["channel_mult"])
    attn_res = set(int(r) for r in params.get("attention_resolutions", []))
    attn = [2**lvl in attn_res for lvl in range(len(mult))]
    channels = tuple(mc * m for m in mult)
    head_channels = int(params.get("num_head_channels", 64))
    widths = [int(w) for w in added_id_widths]
    return {
        "in_channels": int(params.get("in_channels", 8)),
        "out_channels": int(params.get("out_channels", 4)),
        "down_block_types": tuple("CrossAttnDownBlockSpatioTemporal" if a else "DownBlockSpatioTemporal" for a in attn),
        "up_block_types": tuple("CrossAttnUpBlockSpatioTemporal" if a else "UpBlockSpatioTemporal" for a in reversed(attn)),
        "block_out_channels": channels,
        "layers_per_block": int(params.get("num_res_blocks", 2)),
        "cross_attention_dim": int(params.get("context_dim", 1024)),
        "transformer_layers_per_block": int(params.get("transformer_depth", 1)),
        "num_attention_heads": tuple(max(1, c // head_channels) for c in channels),
        "addition_time_embed_dim": widths[0],
        "projection_class_embeddings_input_dim": int(params.get("adm_in_channels", sum(widths))),
        "addition_time_embed_dims": tuple(widths),
        "num_frames": int(num_frames),
    }


def video_unet_state_dict_from_diffusers(
    diffusers_sd: Mapping[str, torch.Tensor], sgm_keys: Sequence[str]
) -> Dict[str, torch.Tensor]:
    """The inverse of `convert_video_unet_state_dict`: diffusers-named tensors back to the VideoUNet names
    `sgm_keys` (without prefix) of a checkpoint with the same structure (e.g. the one fine-tuning started from).
    Raises ValueError when the two sets of names do not correspond one to one."""
    forward = convert_video_unet_state_dict({k: k for k in sgm_keys})  # sgm name -> diffusers name (values = sgm)
    inverse = {new: old for new, old in forward.items()}
    missing = sorted(set(inverse) - set(diffusers_sd))
    extra = sorted(set(diffusers_sd) - set(inverse))
    if missing or extra:
        raise ValueError(f"the UNet does not match the reference layout: missing {missing[:5]}, unexpected {extra[:5]}")
    return {inverse[k]: v for k, v in diffusers_sd.items()}
