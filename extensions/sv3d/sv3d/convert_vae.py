"""generative-models autoencoder weights -> diffusers `AutoencoderKL` / `AutoencoderKLTemporalDecoder`.

The 2-D parts go through diffusers' own `convert_ldm_vae_checkpoint`; only the temporal layers of SVD's
`VideoDecoder` (time_stack, mix_factor, time_mix_conv), which that helper does not know, are renamed here.

Which tensors build the pipeline's VAE (the same ones generative-models' sampling uses):
- encoder + quant_conv: the conditioner's autoencoder (`conditioner.embedders.<i>.encoder.{encoder,quant_conv}`),
  which makes the conditioning latents;
- decoder (+ post_quant_conv where the first stage has one): `first_stage_model.*`.
"""

from __future__ import annotations

import re
from typing import Dict, Mapping, Optional

import torch
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

_TEMPORAL_RESNET = {
    "in_layers.0.": "norm1.",
    "in_layers.2.": "conv1.",
    "out_layers.0.": "norm2.",
    "out_layers.3.": "conv2.",
}


def _decoder_levels(decoder_sd: Mapping[str, torch.Tensor]) -> int:
    return 1 + max(int(k.split(".")[1]) for k in decoder_sd if k.startswith("up."))


def vae_config_from_state_dict(
    encoder_sd: Mapping[str, torch.Tensor], decoder_sd: Mapping[str, torch.Tensor], scaling_factor: float
) -> Dict[str, object]:
    """diffusers VAE config from tensor shapes (keys without the `encoder.` / `decoder.` prefixes)."""
    levels = 1 + max(int(k.split(".")[1]) for k in encoder_sd if k.startswith("down."))
    channels = [int(encoder_sd[f"down.{i}.block.0.conv2.weight"].shape[0]) for i in range(levels)]
    layers = 1 + max(int(k.split(".")[3]) for k in encoder_sd if k.startswith("down.0.block."))
    z2 = int(encoder_sd["conv_out.weight"].shape[0])
    if _decoder_levels(decoder_sd) != levels:
        raise ValueError("the checkpoint's VAE encoder and decoder have different depths")
    return {
        "in_channels": int(encoder_sd["conv_in.weight"].shape[1]),
        "out_channels": int(decoder_sd["conv_out.weight"].shape[0]),
        "block_out_channels": tuple(channels),
        "layers_per_block": layers,
        "latent_channels": z2 // 2,
        "scaling_factor": float(scaling_factor),
    }


def _convert_2d(
    encoder_sd: Mapping[str, torch.Tensor],
    decoder_sd: Mapping[str, torch.Tensor],
    extra: Mapping[str, torch.Tensor],
    levels: int,
) -> Dict[str, torch.Tensor]:
    ldm = {f"first_stage_model.encoder.{k}": v for k, v in encoder_sd.items()}
    ldm.update({f"first_stage_model.decoder.{k}": v for k, v in decoder_sd.items()})
    ldm.update({f"first_stage_model.{k}": v for k, v in extra.items()})
    cfg = {"down_block_types": [None] * levels, "up_block_types": [None] * levels}
    out = convert_ldm_vae_checkpoint(ldm, cfg)
    if len(out) != len(ldm):
        raise KeyError(
            f"VAE conversion placed {len(out)} of {len(ldm)} tensors; the autoencoder layout is not the "
            "generative-models one"
        )
    return out


def convert_sv3d_vae(
    encoder_sd: Mapping[str, torch.Tensor],
    quant_conv: Mapping[str, torch.Tensor],
    decoder_sd: Mapping[str, torch.Tensor],
    post_quant_conv: Optional[Mapping[str, torch.Tensor]] = None,
) -> Dict[str, torch.Tensor]:
    """Plain 2-D autoencoder (SV3D: no post_quant_conv; SVD image-decoder variants: with it)."""
    extra = {f"quant_conv.{k}": v for k, v in quant_conv.items()}
    if post_quant_conv:
        extra.update({f"post_quant_conv.{k}": v for k, v in post_quant_conv.items()})
    return _convert_2d(encoder_sd, decoder_sd, extra, _decoder_levels(decoder_sd))


def convert_temporal_vae(
    encoder_sd: Mapping[str, torch.Tensor],
    quant_conv: Mapping[str, torch.Tensor],
    decoder_sd: Mapping[str, torch.Tensor],
) -> Dict[str, torch.Tensor]:
    """SVD: 2-D encoder + `VideoDecoder` (temporal res blocks, learned mix factors, temporal output conv)."""
    levels = _decoder_levels(decoder_sd)
    spatial = {k: v for k, v in decoder_sd.items() if not _is_temporal_decoder_key(k)}
    out = _convert_2d(encoder_sd, spatial, {f"quant_conv.{k}": v for k, v in quant_conv.items()}, levels)
    # the decoder's resnets are SpatioTemporalResBlocks: their 2-D part sits one level deeper
    out = {re.sub(r"^(decoder\.(?:mid_block|up_blocks\.\d+)\.resnets\.\d+\.)", r"\1spatial_res_block.", k): v for k, v in out.items()}
    for key, value in decoder_sd.items():
        if _is_temporal_decoder_key(key):
            out[_rename_temporal_decoder_key(key, levels)] = value
    return out


def _is_temporal_decoder_key(key: str) -> bool:
    return ".time_stack." in key or key.endswith("mix_factor") or key.startswith("conv_out.time_mix_conv.")


def _rename_temporal_decoder_key(key: str, levels: int) -> str:
    if key.startswith("conv_out.time_mix_conv."):
        return "decoder.time_conv_out." + key[len("conv_out.time_mix_conv.") :]
    m = re.match(r"mid\.block_(\d)\.(.*)", key)
    if m:
        base, rest = f"decoder.mid_block.resnets.{int(m.group(1)) - 1}.", m.group(2)
    else:
        m = re.match(r"up\.(\d+)\.block\.(\d+)\.(.*)", key)
        if not m:
            raise KeyError(f"unexpected temporal decoder key {key!r}")
        base = f"decoder.up_blocks.{levels - 1 - int(m.group(1))}.resnets.{m.group(2)}."
        rest = m.group(3)
    if rest == "mix_factor":
        return base + "time_mixer.mix_factor"
    rest = rest[len("time_stack.") :]
    for old, new in _TEMPORAL_RESNET.items():
        if rest.startswith(old):
            return base + "temporal_res_block." + new + rest[len(old) :]
    raise KeyError(f"unexpected temporal decoder key {key!r}")


def strip_prefix(sd: Mapping[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    """Sub-dict of the keys under `prefix`, with the prefix removed."""
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}

