"""Build the diffusers / transformers modules of a pipeline from an original generative-models state dict."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Tuple

import torch
from diffusers import AutoencoderKL, AutoencoderKLTemporalDecoder
from transformers import CLIPVisionModelWithProjection

from .config import ModelSpec
from .convert_clip import OPEN_CLIP_UNUSED, clip_vision_config_from_state_dict, convert_open_clip_visual
from .convert_unet import UNET_PREFIX, convert_video_unet_state_dict, unet_config_from_state_dict
from .convert_vae import convert_sv3d_vae, convert_temporal_vae, strip_prefix, vae_config_from_state_dict
from .unet import SV3DUNet

logger = logging.getLogger(__name__)


@dataclass
class LoadReport:
    """Where each checkpoint tensor went.

    `ignored` holds the tensors that the original model carries but its inference never reads: the OpenCLIP
    text-tower remnants, the conditioner autoencoder's decoder, and the first stage's encoder (the
    conditioning latents come from the conditioner's encoder). `unexpected` must stay empty for a
    well-formed checkpoint.
    """

    used: Dict[str, List[str]] = field(default_factory=dict)
    ignored: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)


def _load_strict(module: torch.nn.Module, sd: Mapping[str, torch.Tensor], what: str) -> None:
    own = module.state_dict()
    # transformers keeps a non-persistent-by-intent buffer for CLIP position ids in some versions
    optional = {k for k in own if k.endswith("position_ids")}
    missing = sorted(set(own) - set(sd) - optional)
    unexpected = sorted(set(sd) - set(own))
    wrong = sorted(k for k in set(sd) & set(own) if tuple(sd[k].shape) != tuple(own[k].shape))
    if missing or unexpected or wrong:
        raise ValueError(
            f"{what}: the checkpoint does not fit the model built from its shapes: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}, wrong shape {wrong[:5]}"
        )
    # assign: the module takes the checkpoint's tensors instead of copying them into its random init
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()}, strict=False, assign=True)


def build_unet(sd: Mapping[str, torch.Tensor], spec: ModelSpec) -> Tuple[SV3DUNet, List[str]]:
    unet_sd = strip_prefix(sd, UNET_PREFIX)
    cfg = unet_config_from_state_dict(unet_sd, spec.network, spec.vector_widths, spec.num_frames)
    if spec.extra.get("vector_kinds") is not None:  # non-sinusoid slots (Hi3D's aesthetic score)
        cfg["addition_time_embed_kinds"] = tuple(spec.extra["vector_kinds"])
    unet = SV3DUNet(**cfg)
    _load_strict(unet, convert_video_unet_state_dict(unet_sd), "UNet")
    return unet, [UNET_PREFIX + k for k in unet_sd]


def build_image_encoder(sd: Mapping[str, torch.Tensor], spec: ModelSpec) -> Tuple[CLIPVisionModelWithProjection, List[str], List[str]]:
    base = f"conditioner.embedders.{spec.clip_index}.open_clip.model."
    visual = strip_prefix(sd, base + "visual.")
    if not visual:
        raise ValueError(f"the checkpoint has no OpenCLIP image encoder under {base}visual.*")
    model = CLIPVisionModelWithProjection(clip_vision_config_from_state_dict(visual))
    _load_strict(model, convert_open_clip_visual(visual), "image encoder")
    ignored = [k for k in sd if k.startswith(base) and k[len(base) :].startswith(OPEN_CLIP_UNUSED)]
    return model, [base + "visual." + k for k in visual], ignored


def build_vae(sd: Mapping[str, torch.Tensor], spec: ModelSpec) -> Tuple[torch.nn.Module, List[str], List[str]]:
    cond = f"conditioner.embedders.{spec.cond_frames_index}.encoder."
    enc = strip_prefix(sd, cond + "encoder.")
    quant = strip_prefix(sd, cond + "quant_conv.")
    dec = strip_prefix(sd, "first_stage_model.decoder.")
    if not enc or not quant:
        raise ValueError(f"the checkpoint has no conditioning-frame encoder under {cond}encoder.* / {cond}quant_conv.*")
    if not dec:
        raise ValueError("the checkpoint has no first-stage decoder (first_stage_model.decoder.*)")
    used = [cond + "encoder." + k for k in enc] + [cond + "quant_conv." + k for k in quant]
    used += ["first_stage_model.decoder." + k for k in dec]
    cfg = vae_config_from_state_dict(enc, dec, spec.scale_factor)
    n = len(cfg["block_out_channels"])
    if spec.first_stage == "temporal":
        vae = AutoencoderKLTemporalDecoder(down_block_types=("DownEncoderBlock2D",) * n, **cfg)
        converted = convert_temporal_vae(enc, quant, dec)
    else:
        post = strip_prefix(sd, "first_stage_model.post_quant_conv.") if spec.first_stage == "autoencoder_kl" else {}
        if spec.first_stage == "autoencoder_kl" and not post:
            raise ValueError("the image-decoder first stage lacks first_stage_model.post_quant_conv.*")
        used += ["first_stage_model.post_quant_conv." + k for k in post]
        vae = AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * n,
            up_block_types=("UpDecoderBlock2D",) * n,
            use_post_quant_conv=bool(post),
            **cfg,
        )
        converted = convert_sv3d_vae(enc, quant, dec, post)
    _load_strict(vae, converted, "VAE")
    ignored_prefixes = [cond + "decoder.", cond + "post_quant_conv.", "first_stage_model.encoder.", "first_stage_model.quant_conv."]
    if spec.first_stage != "autoencoder_kl":
        ignored_prefixes.append("first_stage_model.post_quant_conv.")
    ignored = [k for k in sd if any(k.startswith(p) for p in ignored_prefixes)]
    return vae, used, ignored


def build_components(sd: Mapping[str, torch.Tensor], spec: ModelSpec):
    """(unet, vae, image_encoder, LoadReport) from an original state dict."""
    report = LoadReport()
    unet, report.used["unet"] = build_unet(sd, spec)
    vae, report.used["vae"], ignored_vae = build_vae(sd, spec)
    image_encoder, report.used["image_encoder"], ignored_clip = build_image_encoder(sd, spec)
    report.ignored = sorted(ignored_vae + ignored_clip)
    accounted = set(report.ignored).union(*map(set, report.used.values()))
    report.unexpected = sorted(set(sd) - accounted)
    if report.unexpected:
        logger.warning("sv3d: %d checkpoint tensors have no place in the pipeline: %s", len(report.unexpected), report.unexpected[:10])
    return unet, vae, image_encoder, report
