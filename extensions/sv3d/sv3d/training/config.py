"""Configuration of a fine-tuning run: YAML + `key=value` overrides merged by OmegaConf onto dataclasses.

Unknown keys, wrong types and missing required values stop the run before any work, naming the key. Entries
left null take the recipe's default (see `recipes.Recipe.defaults`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


@dataclass
class DataConfig:
    root: str = ""  # image root (svd_meta), Hi3D root (holding images/<uid>/ or <uid>/), or orbit folder(s)
    meta: Optional[str] = None  # svd_meta.jsonl (default: <root>/svd_meta.jsonl when format is svd_meta)
    format: str = "auto"  # auto | svd_meta | hi3d | transforms
    num_frames: Optional[int] = None  # F views per clip (recipe default)
    resolution: int = 576  # square side the views are resized to (latents resolution / 8)
    random_roll: bool = True  # random condition view (cyclic roll of its ring)
    hi3d_elevations: List[float] = field(default_factory=lambda: [-10.0, 0.0, 10.0, 20.0, 30.0, 40.0])
    hi3d_views_per_ring: int = 16
    num_workers: int = 0
    max_objects: Optional[int] = None
    latent_cache: Optional[str] = None  # folder of safetensors shards written by `python -m sv3d.latent_cache`


@dataclass
class ValidationConfig:
    root: Optional[str] = None  # held-out objects (same formats as data); null = no validation
    meta: Optional[str] = None
    format: str = "auto"
    num_objects: int = 2
    every_n_steps: int = 0  # 0 = only at the end (when root is set)
    num_steps: int = 25
    num_frames: Optional[int] = None  # default data.num_frames
    cond_aug: Optional[float] = None  # default: the export version's (0.02 SVD-MV, 1e-5 SV3D)
    min_scale: Optional[float] = None
    max_scale: Optional[float] = None
    fps: int = 7
    seed: int = 23


@dataclass
class LossConfig:
    weighting: Optional[str] = None  # edm ((s^2+1)/s^2) | svd_mv_reference (s^2 + s^-2)
    p_mean: float = 1.0  # sigma = exp(N(p_mean, p_std^2)), one per clip
    p_std: float = 1.6
    noise_aug_mean: float = -3.0  # noise-aug strength = exp(N(mean, std^2)) per clip, added in pixel space
    noise_aug_std: float = 0.5
    cfg_rate: Optional[float] = None  # probability of dropping the image conditioning
    cfg_mode: Optional[str] = None  # batch (one coin per batch, the reference) | sample | independent (CLIP and latents apart)


@dataclass
class OptimConfig:
    learning_rate: float = 1e-5
    betas: List[float] = field(default_factory=lambda: [0.9, 0.99])
    weight_decay: float = 0.0
    eps: float = 1e-8
    lr_scheduler: str = "constant_with_warmup"  # any diffusers.optimization scheduler name
    warmup_steps: float = 0.05  # < 1: fraction of max_steps
    max_grad_norm: float = 1.0  # 0 = no clipping


@dataclass
class EMAConfig:
    enabled: bool = False
    decay: float = 0.99999
    export: bool = True  # export the EMA weights (else the raw ones)


@dataclass
class LoRAConfig:
    enabled: bool = False
    rank: int = 16
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: List[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    # modules trained in full next to the adapters (the re-initialised added embedding must learn)
    extra_trainable: List[str] = field(default_factory=lambda: ["add_embedding"])


@dataclass
class TrainConfig:
    recipe: str = "svd_mv"
    pretrained: str = "???"  # source checkpoint in generative-models layout (svd_xt.safetensors, sv3d_u.safetensors ...)
    original_config: Optional[str] = None  # its sgm YAML (default: the shipped one)
    output_dir: str = "outputs/sv3d_train"
    seed: int = 0
    batch_size: int = 2  # per process
    gradient_accumulation_steps: int = 1
    max_steps: int = 1000
    gradient_checkpointing: bool = True
    checkpointing_granularity: str = "layer"  # layer (diffusers, the reference) | block (whole UNet blocks: least memory)
    freeze_spatial: bool = False
    freeze_temporal: bool = False
    checkpoint_every_n_steps: int = 500  # accelerate save_state under <output_dir>/checkpoints/step_N
    checkpoints_total_limit: int = 2
    resume: Optional[str] = None  # "latest" or a checkpoint folder
    export_every_n_steps: int = 0  # 0 = only at the end
    log_every_n_steps: int = 1
    tensorboard: bool = True
    progress_bar: bool = True
    data: DataConfig = field(default_factory=DataConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)


class ConfigError(ValueError):
    pass


def load_config(path: Optional[str] = None, overrides: Sequence[str] = (), base: Optional[dict] = None) -> TrainConfig:
    """Structured config from a YAML file (optional), a dict and a dotlist; recipe defaults fill null entries."""
    schema = OmegaConf.structured(TrainConfig)
    try:
        parts = [schema]
        if base is not None:
            parts.append(OmegaConf.create(base))
        if path is not None:
            if not os.path.isfile(path):
                raise ConfigError(f"config file {path!r} does not exist")
            parts.append(OmegaConf.load(path))
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ConfigError(f"overrides must be key=value, got {bad}")
        parts.append(OmegaConf.from_dotlist(list(overrides)))
        cfg = OmegaConf.merge(*parts)
        missing = sorted(OmegaConf.missing_keys(cfg))
        if missing:
            raise ConfigError(f"missing required config value(s): {', '.join(missing)} (set them in the YAML or as key=value)")
        obj: TrainConfig = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"invalid config: {exc}") from None
    apply_recipe_defaults(obj)
    validate(obj)
    return obj


def apply_recipe_defaults(cfg: TrainConfig) -> None:
    from .recipes import get_recipe

    recipe = get_recipe(cfg.recipe)
    for dotted, value in recipe.defaults.items():
        section, _, key = dotted.rpartition(".")
        node = getattr(cfg, section) if section else cfg
        if getattr(node, key) is None:
            setattr(node, key, value)


def validate(cfg: TrainConfig) -> None:
    from .conditioning import CFG_MODES
    from .data_readers import FORMATS
    from .loss import LOSS_WEIGHTINGS

    checks = [
        (cfg.loss.weighting in LOSS_WEIGHTINGS, f"loss.weighting must be one of {LOSS_WEIGHTINGS}, got {cfg.loss.weighting!r}"),
        (cfg.loss.cfg_mode in CFG_MODES, f"loss.cfg_mode must be one of {CFG_MODES}, got {cfg.loss.cfg_mode!r}"),
        (0.0 <= (cfg.loss.cfg_rate or 0.0) <= 1.0, f"loss.cfg_rate must be in [0, 1], got {cfg.loss.cfg_rate}"),
        (cfg.data.format in FORMATS, f"data.format must be one of {FORMATS}, got {cfg.data.format!r}"),
        (bool(cfg.data.root) or bool(cfg.data.meta), "data.root (or data.meta) must be set"),
        (cfg.data.num_frames is not None and cfg.data.num_frames >= 1, f"data.num_frames must be >= 1, got {cfg.data.num_frames}"),
        (cfg.data.resolution % 8 == 0 and cfg.data.resolution >= 8, f"data.resolution must be a multiple of 8, got {cfg.data.resolution}"),
        (cfg.batch_size >= 1, f"batch_size must be >= 1, got {cfg.batch_size}"),
        (cfg.checkpointing_granularity in ("layer", "block"), f"checkpointing_granularity must be layer or block, got {cfg.checkpointing_granularity!r}"),
        (cfg.gradient_accumulation_steps >= 1, "gradient_accumulation_steps must be >= 1"),
        (cfg.max_steps >= 1, f"max_steps must be >= 1, got {cfg.max_steps}"),
        (cfg.optim.warmup_steps >= 0, "optim.warmup_steps must be >= 0"),
        (not (cfg.freeze_spatial and cfg.freeze_temporal), "freeze_spatial and freeze_temporal together leave nothing to train"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)
