"""OpenCLIP vision tower (generative-models' FrozenOpenCLIPImageEmbedder) -> transformers CLIPVisionModelWithProjection.

Neither diffusers nor transformers ships this direction for the *vision* tower (diffusers' single-file helpers
convert only OpenCLIP text towers), so the renaming is written here. Layer for layer the two models are the
same ViT: pre-LN, GELU MLP, class token pooled through the post-LN and a bias-free projection.
"""

from __future__ import annotations

import math
import re
from typing import Dict, Mapping

import torch
from transformers import CLIPVisionConfig

# Known OpenCLIP towers whose head width is not the OpenCLIP default of 64.
_HEADS_BY_WIDTH = {1280: 16}  # ViT-H-14: width 1280, head width 80

# OpenCLIP text-tower remnants kept in the released checkpoints (generative-models deletes only
# `model.transformer`); the image embedder never uses them.
OPEN_CLIP_UNUSED = ("token_embedding.", "positional_embedding", "ln_final.", "text_projection", "logit_scale")

_BLOCK = {
    "ln_1.": "layer_norm1.",
    "ln_2.": "layer_norm2.",
    "mlp.c_fc.": "mlp.fc1.",
    "mlp.c_proj.": "mlp.fc2.",
    "attn.out_proj.": "self_attn.out_proj.",
}


def clip_vision_config_from_state_dict(visual_sd: Mapping[str, torch.Tensor], hidden_act: str = "gelu") -> CLIPVisionConfig:
    """Config of the vision tower from tensor shapes (keys without the `visual.` prefix).

    OpenCLIP towers use GELU; OpenAI's CLIP (same key layout) uses `hidden_act="quick_gelu"`."""
    width = int(visual_sd["class_embedding"].shape[0])
    patch = int(visual_sd["conv1.weight"].shape[-1])
    grid = int(round(math.sqrt(visual_sd["positional_embedding"].shape[0] - 1)))
    layers = 1 + max(int(k.split(".")[2]) for k in visual_sd if k.startswith("transformer.resblocks."))
    return CLIPVisionConfig(
        hidden_size=width,
        intermediate_size=int(visual_sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]),
        projection_dim=int(visual_sd["proj"].shape[1]),
        num_hidden_layers=layers,
        num_attention_heads=_HEADS_BY_WIDTH.get(width, max(1, width // 64)),
        num_channels=int(visual_sd["conv1.weight"].shape[1]),
        image_size=grid * patch,
        patch_size=patch,
        hidden_act=hidden_act,
        layer_norm_eps=1e-5,
    )


def convert_open_clip_visual(visual_sd: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Rename an OpenCLIP `visual.*` state dict (prefix removed) to CLIPVisionModelWithProjection keys."""
    out: Dict[str, torch.Tensor] = {}
    for key, value in visual_sd.items():
        if key == "class_embedding":
            out["vision_model.embeddings.class_embedding"] = value
        elif key == "positional_embedding":
            out["vision_model.embeddings.position_embedding.weight"] = value
        elif key == "conv1.weight":
            out["vision_model.embeddings.patch_embedding.weight"] = value
        elif key.startswith("ln_pre."):
            out["vision_model.pre_layrnorm." + key[len("ln_pre.") :]] = value
        elif key.startswith("ln_post."):
            out["vision_model.post_layernorm." + key[len("ln_post.") :]] = value
        elif key == "proj":
            out["visual_projection.weight"] = value.t().contiguous()
        else:
            m = re.match(r"transformer\.resblocks\.(\d+)\.(.*)", key)
            if not m:
                raise KeyError(f"unexpected OpenCLIP visual key {key!r}")
            base, rest = f"vision_model.encoder.layers.{m.group(1)}.", m.group(2)
            if rest.startswith("attn.in_proj_"):
                kind = rest[len("attn.in_proj_") :]  # weight | bias
                for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                    out[f"{base}self_attn.{name}.{kind}"] = part.contiguous()
                continue
            for old, new in _BLOCK.items():
                if rest.startswith(old):
                    out[base + new + rest[len(old) :]] = value
                    break
            else:
                raise KeyError(f"unexpected OpenCLIP visual key {key!r}")
    return out
