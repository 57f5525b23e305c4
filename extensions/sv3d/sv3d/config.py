"""Model description read from a generative-models (sgm) inference YAML, and version recognition from keys."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import resources
from typing import Dict, List, Mapping, Optional, Union

import torch
from omegaconf import DictConfig, OmegaConf

VERSIONS = ("sv3d_u", "sv3d_p", "svd", "svd_xt", "svd_image_decoder", "svd_xt_image_decoder", "svd_mv")

# Sampling defaults of the reference script (scripts/sampling/simple_video_sample.py) per version.
_DEFAULTS = {
    "sv3d_u": dict(num_frames=21, num_steps=50, cond_aug=1e-5),
    "sv3d_p": dict(num_frames=21, num_steps=50, cond_aug=1e-5),
    "svd": dict(num_frames=14, num_steps=25, cond_aug=0.02),
    "svd_image_decoder": dict(num_frames=14, num_steps=25, cond_aug=0.02),
    "svd_xt": dict(num_frames=25, num_steps=30, cond_aug=0.02),
    "svd_xt_image_decoder": dict(num_frames=25, num_steps=30, cond_aug=0.02),
    # SVD-MV (king159/svd-mv validation): 25 steps, noise aug 0.02, 21 views
    "svd_mv": dict(num_frames=21, num_steps=25, cond_aug=0.02),
}

# vector-conditioning width -> family, for checkpoints given without a config
_FAMILY_BY_ADM = {256: "sv3d_u", 1280: "sv3d_p", 768: "svd", 512: "svd_mv"}


@dataclass
class ModelSpec:
    """What the pipeline needs to know about one released model."""

    version: str
    network: Dict[str, object]
    vector_keys: List[str]  # added time ids, in config (= concatenation) order
    vector_widths: List[int]
    clip_index: int  # conditioner.embedders.<i> holding the OpenCLIP image embedder
    cond_frames_index: int  # conditioner.embedders.<i> holding the conditioning autoencoder
    first_stage: str  # "decoder" (SV3D: 2-D decoder, no post_quant_conv) | "temporal" | "autoencoder_kl"
    scale_factor: float = 0.18215
    sigma_min: float = 0.002
    sigma_max: float = 700.0
    rho: float = 7.0
    guider: str = "triangle"  # "triangle" | "linear"
    min_scale: float = 1.0
    max_scale: float = 2.5
    num_frames: int = 21
    num_steps: int = 50
    cond_aug: float = 1e-5
    extra: Dict[str, object] = field(default_factory=dict)

    @property
    def family(self) -> str:
        """sv3d_u | sv3d_p | svd | svd_mv (the svd_xt and image-decoder variants share the svd conditioning)."""
        if "elevation_deg" in self.vector_keys:
            return "svd_mv"
        if "polars_rad" in self.vector_keys:
            return "sv3d_p"
        if "fps_id" in self.vector_keys:
            return "svd"
        return "sv3d_u"


def family_of_version(version: str) -> str:
    """sv3d_u | sv3d_p | svd | svd_mv."""
    return version if version in ("sv3d_u", "sv3d_p", "svd_mv") else "svd"


def shipped_config_path(version: str) -> str:
    if version not in VERSIONS:
        raise ValueError(f"unknown version {version!r}; known: {', '.join(VERSIONS)}")
    return str(resources.files("sv3d.configs").joinpath(f"{version}.yaml"))


def _target_name(node: Mapping) -> str:
    return str(node.get("target", "")).rsplit(".", 1)[-1]


def spec_from_config(cfg: Union[str, os.PathLike, DictConfig, Mapping], version: Optional[str] = None) -> ModelSpec:
    """Parse an sgm inference YAML (path or loaded) into a ModelSpec."""
    if isinstance(cfg, (str, os.PathLike)):
        if not os.path.isfile(cfg):
            raise FileNotFoundError(f"original_config {cfg!r} does not exist")
        if version is None:
            stem = os.path.splitext(os.path.basename(str(cfg)))[0]
            version = stem if stem in VERSIONS else None
        cfg = OmegaConf.load(cfg)
    cfg = OmegaConf.create(cfg) if not isinstance(cfg, DictConfig) else cfg
    try:
        params = cfg.model.params
        network = OmegaConf.to_container(params.network_config.params, resolve=True)
        embedders = params.conditioner_config.params.emb_models
    except Exception as exc:  # noqa: BLE001 - re-raised with context
        raise ValueError(
            "original_config is not a generative-models video model YAML (expected model.params.network_config "
            "and model.params.conditioner_config.params.emb_models)"
        ) from exc
    vector_keys, vector_widths = [], []
    clip_index = cond_index = -1
    for i, emb in enumerate(embedders):
        name = _target_name(emb)
        if name == "ConcatTimestepEmbedderND":
            vector_keys.append(str(emb.input_key))
            vector_widths.append(int(emb.params.outdim))
        elif "OpenCLIPImage" in name:
            clip_index = i
        elif name == "VideoPredictionEmbedderWithEncoder":
            cond_index = i
    if clip_index < 0 or cond_index < 0:
        raise ValueError("original_config lacks the OpenCLIP image embedder or the conditioning-frame encoder")
    first = params.first_stage_config
    first_name = _target_name(first)
    if first_name == "AutoencoderKL":
        first_stage = "autoencoder_kl"
    elif "VideoDecoder" in _target_name(first.params.get("decoder_config", {})):
        first_stage = "temporal"
    else:
        first_stage = "decoder"
    sampler = params.get("sampler_config", None)
    guider, min_scale, max_scale = "triangle", 1.0, 2.5
    sigma_max = 700.0
    if sampler is not None:
        g = sampler.params.get("guider_config", None)
        if g is not None:
            guider = "linear" if _target_name(g) == "LinearPredictionGuider" else "triangle"
            min_scale = float(g.params.get("min_scale", 1.0))
            max_scale = float(g.params.get("max_scale", 2.5))
        d = sampler.params.get("discretization_config", None)
        if d is not None and d.get("params", None) is not None:
            sigma_max = float(d.params.get("sigma_max", sigma_max))
    spec = ModelSpec(
        version=version or "",
        network=network,
        vector_keys=vector_keys,
        vector_widths=vector_widths,
        clip_index=clip_index,
        cond_frames_index=cond_index,
        first_stage=first_stage,
        scale_factor=float(params.get("scale_factor", 0.18215)),
        sigma_max=sigma_max,
        guider=guider,
        min_scale=min_scale,
        max_scale=max_scale,
    )
    if not spec.version:
        spec.version = _version_name(spec.family, first_stage, xt=False)
    if sampler is None and spec.version in VERSIONS:
        # an inference YAML without sampler_config (e.g. configs/inference/svd.yaml): the version's recipe
        shipped = spec_from_config(shipped_config_path(spec.version), spec.version)
        spec.guider, spec.min_scale, spec.max_scale = shipped.guider, shipped.min_scale, shipped.max_scale
        spec.sigma_max = shipped.sigma_max
    for k, v in _DEFAULTS.get(spec.version, _DEFAULTS[spec.family]).items():
        setattr(spec, k, v)
    return spec


def _version_name(family: str, first_stage: str, xt: bool) -> str:
    if family != "svd":
        return family
    name = "svd_xt" if xt else "svd"
    return name + ("_image_decoder" if first_stage == "autoencoder_kl" else "")


def describe_foreign_checkpoint(keys: List[str]) -> Optional[str]:
    """A short name of a known non-video layout, for error messages."""
    ks = set(keys)
    if any(k.startswith("model.diffusion_model.camera_embed.") for k in ks):
        return "an MVDream checkpoint (SD UNet with a camera MLP; load it with mvdream.MVDreamPipeline)"
    if any(k.startswith("cond_stage_model.") for k in ks) and any(k.startswith("model.diffusion_model.") for k in ks):
        return "a Stable Diffusion 1.x/2.x checkpoint (text-conditioned image UNet)"
    if any(k.startswith("conditioner.embedders.") and ".transformer." in k for k in ks):
        return "an SDXL-style text-to-image checkpoint"
    if any(k.startswith("down_blocks.") or k.startswith("unet.") for k in ks):
        return "a diffusers-format state dict (use diffusers' from_pretrained instead)"
    return None


def detect_version(sd: Mapping[str, torch.Tensor], path: str = "") -> str:
    """Recognise sv3d_u / sv3d_p / svd / svd_xt / *_image_decoder from the tensor names and shapes."""
    keys = list(sd.keys())
    is_video = any(k.startswith("model.diffusion_model.") and ".time_stack." in k for k in keys)
    if not is_video or "model.diffusion_model.label_emb.0.0.weight" not in sd:
        what = describe_foreign_checkpoint(keys) or "not a generative-models video UNet checkpoint"
        raise ValueError(
            f"{path or 'checkpoint'}: {what}. sv3d loads SV3D (sv3d_u, sv3d_p) and SVD (svd, svd_xt) checkpoints "
            "in generative-models layout (keys model.diffusion_model.*.time_stack.*, conditioner.embedders.*, "
            "first_stage_model.*)"
        )
    adm = int(sd["model.diffusion_model.label_emb.0.0.weight"].shape[1])
    family = _FAMILY_BY_ADM.get(adm)
    conv_in = sd.get("model.diffusion_model.input_blocks.0.0.weight")
    if family == "svd_mv" and conv_in is not None and int(conv_in.shape[1]) != 8:
        family = None  # a 512-wide vector with other input channels is not SVD-MV
    if family is None:
        raise ValueError(
            f"{path or 'checkpoint'}: unknown vector-conditioning width {adm} (sv3d_u 256, sv3d_p 1280, svd 768, "
            "svd_mv 512 with 8 input channels); "
            "pass original_config=<the model's sgm YAML>"
        )
    if family != "svd":
        return family
    first_stage = "autoencoder_kl" if "first_stage_model.post_quant_conv.weight" in sd else "temporal"
    name = os.path.basename(str(path)).lower()
    return _version_name("svd", first_stage, xt="xt" in name)

