"""Stage-2 depth conditioning: MiDaS DPT-hybrid (`dpt_hybrid_384.pt`) on transformers' DPTForDepthEstimation.

The MiDaS file (timm ResNet-50 + ViT-B/16 hybrid, `pretrained.*` / `scratch.*` keys) is renamed to transformers'
hybrid DPT (BiT backbone, no timm: timm pulls torchvision). transformers ships no converter in its package
(its conversion script downloads from the hub), so the renaming is written here; the structure is the one
transformers' `Intel/dpt-hybrid-midas` was converted to. Hi3D's DepthEmbedder then: bilinear resize of the
noised condition frames to (int(H/2.6666/32)*32)² (384² at 1024²), depth, bilinear resize to (3H/8)², min-max
per frame, space-to-depth x3 -> 9 channels at the latent size.
"""

from __future__ import annotations

import math
import os
import re
from typing import Dict, Mapping, Optional

import torch
import torch.nn.functional as F
from transformers import DPTConfig, DPTForDepthEstimation

from sv3d.convert_vae import strip_prefix

from .checkpoint import load_weights_only

MIDAS_FILE = "dpt_hybrid_384.pt"
_BACKBONE = "pretrained.model.patch_embed.backbone."
_VIT = "pretrained.model."
# MiDaS readout / resize modules of the two ViT hooks (the two ResNet hooks have none)
_POSTPROCESS = {
    "pretrained.act_postprocess3.0.project.0.": "neck.reassemble_stage.readout_projects.2.0.",
    "pretrained.act_postprocess4.0.project.0.": "neck.reassemble_stage.readout_projects.3.0.",
    "pretrained.act_postprocess3.3.": "neck.reassemble_stage.layers.2.projection.",
    "pretrained.act_postprocess4.3.": "neck.reassemble_stage.layers.3.projection.",
    "pretrained.act_postprocess4.4.": "neck.reassemble_stage.layers.3.resize.",
}
_VIT_BLOCK = {
    "norm1.": "layernorm_before.",
    "norm2.": "layernorm_after.",
    "attn.proj.": "attention.output.dense.",
    "mlp.fc1.": "intermediate.dense.",
    "mlp.fc2.": "output.dense.",
}
_UNUSED = ("pretrained.model.head.",)  # timm's ImageNet classifier, never used by MiDaS


def dpt_hybrid_config(sd: Mapping[str, torch.Tensor]) -> DPTConfig:
    """transformers DPTConfig of a MiDaS DPT-hybrid state dict, from tensor shapes."""
    try:
        width = int(sd[_VIT + "pos_embed"].shape[-1])
        n_tokens = int(sd[_VIT + "pos_embed"].shape[1])
        stem = int(sd[_BACKBONE + "stem.conv.weight"].shape[0])
    except KeyError as exc:
        raise ValueError(f"not a MiDaS DPT-hybrid state dict: missing {exc.args[0]!r}") from None
    stages = sorted({int(k.split(".")[1]) for k in strip_prefix(sd, _BACKBONE) if k.startswith("stages.")})
    depths = [1 + max(int(k.split(".")[3]) for k in strip_prefix(sd, _BACKBONE) if k.startswith(f"stages.{s}.blocks."))
              for s in stages]
    hidden = [int(sd[f"{_BACKBONE}stages.{s}.blocks.0.conv3.weight"].shape[0]) for s in stages]
    ratio = int(sd[f"{_BACKBONE}stages.0.blocks.0.conv1.weight"].shape[0]) / hidden[0]
    layers = 1 + max(int(k.split(".")[3]) for k in sd if k.startswith(_VIT + "blocks."))
    grid = int(round(math.sqrt(n_tokens - 1)))
    features = int(sd["scratch.layer1_rn.weight"].shape[0])
    neck = [int(sd[f"scratch.layer{i}_rn.weight"].shape[1]) for i in range(1, 5)]
    return DPTConfig(
        is_hybrid=True,
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=max(1, width // 64),
        intermediate_size=int(sd[_VIT + "blocks.0.mlp.fc1.weight"].shape[0]),
        image_size=grid * 16,
        patch_size=16,
        layer_norm_eps=1e-6,  # timm's ViT (transformers' default 1e-12 differs slightly)
        backbone_out_indices=[0, 1, layers - 4, layers - 1],  # MiDaS hooks for vitb_rn50_384: [0, 1, 8, 11]
        neck_hidden_sizes=neck,
        fusion_hidden_size=features,
        reassemble_factors=[1, 1, 1, 0.5],
        readout_type="project",
        use_batch_norm_in_fusion_residual=False,
        backbone_featmap_shape=[1, hidden[-1], grid, grid],
        backbone_config=dict(
            global_padding="same",
            layer_type="bottleneck",
            depths=depths,
            hidden_sizes=hidden,
            embedding_size=stem,
            bottle_ratio=ratio,
            out_features=[f"stage{i + 1}" for i in range(len(stages))],
            embedding_dynamic_padding=True,
        ),
    )


def _rename(key: str, width: int) -> Dict[str, slice]:
    """MiDaS key -> {transformers key: slice of the tensor's first dim} (qkv splits into three)."""
    if key in (_VIT + "cls_token",):
        return {"dpt.embeddings.cls_token": slice(None)}
    if key == _VIT + "pos_embed":
        return {"dpt.embeddings.position_embeddings": slice(None)}
    if key.startswith(_VIT + "patch_embed.proj."):
        return {"dpt.embeddings.projection." + key.rsplit(".", 1)[1]: slice(None)}
    if key.startswith(_BACKBONE):
        rest = key[len(_BACKBONE):]
        if rest.startswith("stem.conv."):
            return {"dpt.embeddings.backbone.bit.embedder.convolution." + rest[len("stem.conv."):]: slice(None)}
        if rest.startswith("stem.norm."):
            return {"dpt.embeddings.backbone.bit.embedder.norm." + rest[len("stem.norm."):]: slice(None)}
        m = re.match(r"stages\.(\d+)\.blocks\.(\d+)\.(.*)", rest)
        if m:
            return {f"dpt.embeddings.backbone.bit.encoder.stages.{m.group(1)}.layers.{m.group(2)}.{m.group(3)}": slice(None)}
    if key.startswith(_VIT + "norm."):
        return {"dpt.layernorm." + key.rsplit(".", 1)[1]: slice(None)}
    m = re.match(re.escape(_VIT) + r"blocks\.(\d+)\.(.*)", key)
    if m:
        base, rest = f"dpt.encoder.layer.{m.group(1)}.", m.group(2)
        if rest.startswith("attn.qkv."):
            kind = rest.rsplit(".", 1)[1]
            return {f"{base}attention.attention.{n}.{kind}": slice(i * width, (i + 1) * width)
                    for i, n in enumerate(("query", "key", "value"))}
        for old, new in _VIT_BLOCK.items():
            if rest.startswith(old):
                return {base + new + rest[len(old):]: slice(None)}
    for old, new in _POSTPROCESS.items():
        if key.startswith(old):
            return {new + key[len(old):]: slice(None)}
    m = re.match(r"scratch\.layer(\d)_rn\.(.*)", key)
    if m:
        return {f"neck.convs.{int(m.group(1)) - 1}.{m.group(2)}": slice(None)}
    m = re.match(r"scratch\.refinenet(\d)\.(.*)", key)
    if m:
        rest = m.group(2).replace("out_conv.", "projection.").replace("resConfUnit", "residual_layer")
        rest = rest.replace(".conv1.", ".convolution1.").replace(".conv2.", ".convolution2.")
        return {f"neck.fusion_stage.layers.{4 - int(m.group(1))}.{rest}": slice(None)}
    m = re.match(r"scratch\.output_conv\.(\d)\.(.*)", key)
    if m:
        return {f"head.head.{m.group(1)}.{m.group(2)}": slice(None)}
    raise KeyError(f"unexpected MiDaS DPT-hybrid key {key!r}: no place for it in transformers' DPT")


def convert_midas_dpt_hybrid(sd: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Rename every tensor of a MiDaS DPT-hybrid state dict (unused classifier head dropped)."""
    width = int(sd[_VIT + "pos_embed"].shape[-1])
    out: Dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key.startswith(_UNUSED):
            continue
        for new, part in _rename(key, width).items():
            out[new] = value[part].contiguous()
    return out


def dpt_from_midas_state_dict(sd: Mapping[str, torch.Tensor], what: str = MIDAS_FILE) -> DPTForDepthEstimation:
    model = DPTForDepthEstimation(dpt_hybrid_config(sd))
    converted = convert_midas_dpt_hybrid(sd)
    own = model.state_dict()
    missing = sorted(set(own) - set(converted))
    unexpected = sorted(set(converted) - set(own))
    wrong = sorted(k for k in set(own) & set(converted) if own[k].shape != converted[k].shape)
    if missing or unexpected or wrong:
        raise ValueError(f"{what}: missing {missing[:5]}, unexpected {unexpected[:5]}, wrong shape {wrong[:5]}")
    model.load_state_dict(converted, strict=True)
    return model.eval()


def load_midas_dpt_hybrid(
    path: Optional[str] = None, stage_sd: Optional[Mapping[str, torch.Tensor]] = None, index: int = 2
) -> DPTForDepthEstimation:
    """From the stage-2 file's `conditioner.embedders.<index>.model.model.*` where present, else `dpt_hybrid_384.pt`
    (a MiDaS state dict; read weights-only), or a transformers DPT folder."""
    inner = strip_prefix(stage_sd or {}, f"conditioner.embedders.{index}.model.model.")
    if inner:
        return dpt_from_midas_state_dict(inner, "stage-2 depth embedder")
    if path is None:
        raise FileNotFoundError(
            f"stage 2 needs MiDaS DPT-hybrid: the stage file has no conditioner.embedders.{index}.model.model.* and no "
            f"{MIDAS_FILE} was given"
        )
    if os.path.isdir(path):
        return DPTForDepthEstimation.from_pretrained(path, local_files_only=True).eval()
    sd = load_weights_only(path, "MiDaS DPT-hybrid")
    if isinstance(sd, dict) and "state_dict" in sd:
        sd = sd["state_dict"]
    return dpt_from_midas_state_dict({k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}, path)


class DepthConditioner(torch.nn.Module):
    """(N, 3, H, W) frames in [-1, 1] -> (N, shuffle², H/8, W/8) depth channels, as Hi3D's DepthEmbedder."""

    def __init__(self, dpt: DPTForDepthEstimation, shuffle: int = 3, scale_factor: float = 2.6666):
        super().__init__()
        self.dpt, self.shuffle, self.scale_factor = dpt.eval(), int(shuffle), float(scale_factor)

    def depth_size(self, height: int, width: int):
        sh = int(height / self.scale_factor / 32) * 32
        sw = int(width / self.scale_factor / 32) * 32
        if sh <= 0 or sw <= 0:
            raise ValueError(f"frames of {height}x{width} are too small for the depth model (need >= 86 pixels)")
        return sh, sw

    @torch.no_grad()
    def depth(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, sH, sW) raw MiDaS inverse depth (frames are already in MiDaS' [-1, 1] range)."""
        sh, sw = self.depth_size(*frames.shape[-2:])
        y = F.interpolate(frames.float(), size=(sh, sw), mode="bilinear", align_corners=False)
        # the hybrid embeddings resize their position grid to the input (as MiDaS' forward_flex); transformers'
        # DPTModel does not forward `interpolate_pos_encoding`, so the size it checks against is set instead
        self.dpt.dpt.embeddings.image_size = (sh, sw)
        return self.dpt(pixel_values=y.to(self.dpt.dtype)).predicted_depth

    @torch.no_grad()
    def forward(self, frames: torch.Tensor, chunk: Optional[int] = None) -> torch.Tensor:
        n, _, h, w = frames.shape
        step = n if not chunk else max(1, int(chunk))
        d = torch.cat([self.depth(frames[i : i + step]) for i in range(0, n, step)]).float()
        d = F.interpolate(d[:, None], size=(h // 8 * self.shuffle, w // 8 * self.shuffle), mode="bilinear", align_corners=False)
        lo = d.amin(dim=(1, 2, 3), keepdim=True)
        d = d - lo
        hi = d.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
        d = d / hi
        # '(c h0 w0)' channel order of the reference's rearrange is pixel_unshuffle's
        return F.pixel_unshuffle(d, self.shuffle)
