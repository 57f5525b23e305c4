"""Build the diffusers / transformers modules of a Hi3D stage from its flat generative-models state dict."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional

import torch
from diffusers import AutoencoderKL
from transformers import CLIPVisionModelWithProjection

from sv3d.config import ModelSpec
from sv3d.convert_clip import OPEN_CLIP_UNUSED
from sv3d.convert_unet import UNET_PREFIX, convert_video_unet_state_dict, unet_config_from_state_dict
from sv3d.convert_vae import convert_sv3d_vae, strip_prefix, vae_config_from_state_dict
from sv3d.loading import build_image_encoder, build_vae
from sv3d.unet import SV3DUNet

from .checkpoint import load_weights_only

logger = logging.getLogger(__name__)
OPEN_CLIP_FILE = "open_clip_pytorch_model.bin"


@dataclass
class Hi3DLoadReport:
    """Where the stage file's tensors went. `unet_missing` / `unet_unexpected` are the UNet keys the file lacks /
    that have no place in the UNet (the reference loads with strict=False and only prints them)."""

    used: Dict[str, List[str]] = field(default_factory=dict)
    ignored: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    unet_missing: List[str] = field(default_factory=list)
    unet_unexpected: List[str] = field(default_factory=list)
    sources: Dict[str, str] = field(default_factory=dict)


def build_stage_unet(sd: Mapping[str, torch.Tensor], spec: ModelSpec, report: Hi3DLoadReport,
                     allow_missing_unet_keys: bool = False) -> SV3DUNet:
    """SV3DUNet sized from the tensors (8 or 17 input channels, 768- or 512-wide vector), weights loaded.

    Missing UNet tensors stop the load with their names unless `allow_missing_unet_keys` (then they keep their
    initialisation and are listed in the report); tensors with no place in the UNet are always listed."""
    unet_sd = strip_prefix(sd, UNET_PREFIX)
    cfg = unet_config_from_state_dict(unet_sd, spec.network, spec.vector_widths, spec.num_frames)
    cfg["addition_time_embed_kinds"] = tuple(spec.extra["vector_kinds"])
    unet = SV3DUNet(**cfg)
    try:
        converted = convert_video_unet_state_dict(unet_sd)
    except KeyError as exc:
        raise ValueError(f"{spec.version}: {exc.args[0]}") from None
    own = unet.state_dict()
    # named in the diffusers layout (the missing tensor has no checkpoint name to show)
    report.unet_missing = sorted("unet." + k for k in set(own) - set(converted))
    report.unet_unexpected = sorted("unet." + k for k in set(converted) - set(own))
    wrong = sorted(k for k in set(own) & set(converted) if own[k].shape != converted[k].shape)
    if wrong:
        raise ValueError(f"{spec.version}: UNet tensors of the wrong shape: {wrong[:5]}")
    if report.unet_missing and not allow_missing_unet_keys:
        raise ValueError(
            f"{spec.version}: the checkpoint lacks {len(report.unet_missing)} UNet tensors, e.g. "
            f"{report.unet_missing[:5]}; pass allow_missing_unet_keys=True to keep them at their initialisation"
        )
    if report.unet_missing:
        logger.warning("hi3d: %d UNet tensors missing from the checkpoint: %s", len(report.unet_missing), report.unet_missing[:10])
    unet.load_state_dict({k: v.to(own[k].dtype) for k, v in converted.items() if k in own}, strict=False)
    report.used["unet"] = [UNET_PREFIX + k for k in unet_sd]
    return unet


def build_first_stage_autoencoder(sd: Mapping[str, torch.Tensor], scale_factor: float) -> Optional[AutoencoderKL]:
    """The whole first stage (`first_stage_model.*`: encoder, quant_conv, decoder, post_quant_conv), whose encoder
    makes the reference's `encode_first_stage` latents (stage-2 anchors, training targets); None if absent."""
    enc = strip_prefix(sd, "first_stage_model.encoder.")
    dec = strip_prefix(sd, "first_stage_model.decoder.")
    quant = strip_prefix(sd, "first_stage_model.quant_conv.")
    post = strip_prefix(sd, "first_stage_model.post_quant_conv.")
    if not (enc and dec and quant and post):
        return None
    cfg = vae_config_from_state_dict(enc, dec, scale_factor)
    n = len(cfg["block_out_channels"])
    vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n, **cfg)
    vae.load_state_dict(convert_sv3d_vae(enc, quant, dec, post), strict=True)
    return vae.eval()


def build_open_clip_image_encoder(sd: Mapping[str, torch.Tensor], spec: ModelSpec, report: Hi3DLoadReport,
                                  open_clip_path: Optional[str] = None) -> CLIPVisionModelWithProjection:
    """ViT-H image encoder from the stage file, else from `open_clip_pytorch_model.bin` (OpenCLIP state dict)."""
    base = f"conditioner.embedders.{spec.clip_index}.open_clip.model."
    if any(k.startswith(base + "visual.") for k in sd):
        model, used, ignored = build_image_encoder(sd, spec)
        report.used["image_encoder"], report.sources["image_encoder"] = used, "stage file"
        report.ignored += ignored
        return model
    if open_clip_path is None:
        raise FileNotFoundError(
            f"the stage file has no {base}visual.* (OpenCLIP ViT-H image encoder): pass {OPEN_CLIP_FILE}"
        )
    raw = load_weights_only(open_clip_path, "OpenCLIP ViT-H/14")
    if isinstance(raw, dict) and "state_dict" in raw:
        raw = raw["state_dict"]
    own = {base + k: v for k, v in raw.items() if isinstance(v, torch.Tensor)}
    model, _, _ = build_image_encoder(own, spec)
    report.sources["image_encoder"] = open_clip_path
    return model


def build_stage_vaes(sd: Mapping[str, torch.Tensor], spec: ModelSpec, report: Hi3DLoadReport):
    """(conditioning VAE: the conditioner's encoder + the first-stage decoder, first-stage autoencoder or None)."""
    vae, used, ignored = build_vae(sd, spec)
    report.used["vae"] = used
    first = build_first_stage_autoencoder(sd, spec.scale_factor)
    if first is not None:
        report.used["first_stage_encoder"] = [k for k in sd if k.startswith(("first_stage_model.encoder.", "first_stage_model.quant_conv."))]
        ignored = [k for k in ignored if k not in report.used["first_stage_encoder"]]
    report.ignored += ignored
    return vae, first


def finish_report(sd: Mapping[str, torch.Tensor], report: Hi3DLoadReport, extra_used: Dict[str, List[str]]) -> Hi3DLoadReport:
    report.used.update(extra_used)
    accounted = set(report.ignored).union(*map(set, report.used.values()))
    # OpenCLIP text remnants and the aesthetic CLIP's text remnants are never read
    report.ignored += [k for k in sd if k not in accounted and k.split("aesthetic_model.")[-1].startswith(OPEN_CLIP_UNUSED)
                       and "aesthetic_model." in k]
    accounted |= set(report.ignored)
    report.unexpected = sorted(set(sd) - accounted)
    if report.unexpected:
        logger.warning("hi3d: %d checkpoint tensors have no place in the pipeline: %s", len(report.unexpected), report.unexpected[:10])
    return report
