"""Training recipes: what a fine-tuning run starts from and how a clip conditions the UNet.

A recipe is a small file in this package (or any importable module, named in the config as
`recipe: my_package.my_module:MyRecipe`) holding one subclass of `Recipe` decorated with `@register_recipe`.
Every module of this package is imported on first use, so dropping a file here is all it takes.

The interface (override what differs from the defaults):

- `name` (str): the config's `recipe:` value.
- `source_versions` (tuple of sv3d versions): checkpoints the recipe can start from (`pretrained:`).
- `export_version` (str): the sv3d version of the trained model; its shipped sgm YAML describes the exported
  single file (vector embedders, guider, sampling defaults).
- `condition_last` (bool): False -> the condition view is frame 0 (SVD-MV, Hi3D); True -> the last frame
  (SV3D orbits, azimuth of frame i = (i+1) 360/F).
- `defaults` (dict): values for config entries left null, keys as in the config (`data.num_frames`,
  `loss.weighting`, `loss.cfg_mode`, `loss.cfg_rate`, `loss.noise_aug_mean`, ...).
- `build_unet(source_unet, source_version, generator) -> SV3DUNet`: the model surgery (default: unchanged when the
  source is already `export_version`).
- `added_time_ids(noise_aug (B,), batch) -> (B, F, K)`: raw per-frame ids in `export_version`'s config order;
  `batch` holds `elevation_deg` and `azimuth_deg` (B, F) in the recipe's frame order (azimuths relative to the
  condition view).
- `conditioning(batch, models, noise_aug, aug_noise) -> Conditioning`: the UNet inputs of a clip; the default
  encodes targets with the VAE (mode x scale factor), the CLIP embedding of the clean condition view, and the
  unscaled mode latent of the pixel-noise-augmented condition view repeated over frames. Override it to add
  channels (e.g. depth) to `concat`.
- `cfg_dropped` (tuple): which of ("concat", "context") CFG dropout zeroes (added ids are never dropped).
- `setup(cfg, device, dtype)`: called once after the models are built (load frozen extras, e.g. a depth or an
  aesthetic-score model, kept on the recipe object).
- `export_sgm_config(source_version, source_config) -> DictConfig`: the sgm YAML describing the exported single
  file (default: `export_version`'s shipped YAML with the source's first stage; override for versions that
  `sv3d.config` does not ship).
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Dict, Optional, Tuple, Type

import torch

from ...unet import SV3DUNet

_RECIPES: Dict[str, Type["Recipe"]] = {}
_SCANNED = False


@dataclass
class Conditioning:
    """UNet inputs besides the noisy latents: latents (B, F, 4, h, w) scaled targets; concat (B, F, C', h, w);
    context (B, 1, D); added_time_ids (B, F, K)."""

    latents: torch.Tensor
    concat: torch.Tensor
    context: torch.Tensor
    added_time_ids: torch.Tensor


@dataclass
class FrozenEncoders:
    """The frozen parts of the source pipeline: a diffusers VAE and a CLIPVisionModelWithProjection."""

    vae: torch.nn.Module
    image_encoder: torch.nn.Module
    scale_factor: float = 0.18215


class Recipe:
    name: str = ""
    source_versions: Tuple[str, ...] = ()
    export_version: str = ""
    condition_last: bool = False
    cfg_dropped: Tuple[str, ...] = ("concat", "context")
    defaults: Dict[str, object] = {}

    # ---------------------------------------------------------------- model
    def check_source(self, version: str) -> None:
        if version not in self.source_versions:
            raise ValueError(
                f"recipe {self.name!r} starts from {', '.join(self.source_versions)} checkpoints, but `pretrained` is "
                f"a {version} checkpoint"
            )

    def build_unet(self, source_unet: SV3DUNet, source_version: str, generator: torch.Generator) -> SV3DUNet:
        if source_version == self.export_version:
            return source_unet
        raise NotImplementedError(f"recipe {self.name!r} has no surgery from {source_version}")

    def setup(self, cfg, device, dtype) -> None:
        """Hook for recipes that need frozen models of their own; the default needs none."""

    def export_sgm_config(self, source_version: str, source_config=None):
        from ..export import export_config

        return export_config(self.export_version, source_version, source_config)

    # ---------------------------------------------------------------- conditioning
    def order_frames(self, x: torch.Tensor) -> torch.Tensor:
        """(B, F, ...) with the condition view first -> the recipe's frame order."""
        return torch.roll(x, -1, dims=1) if self.condition_last else x

    def added_time_ids(self, noise_aug: torch.Tensor, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def conditioning(self, batch: Dict[str, torch.Tensor], models: FrozenEncoders, noise_aug: torch.Tensor,
                     aug_noise: torch.Tensor) -> Conditioning:
        """batch["frames"] (B, F, 3, H, W) in [-1, 1] with the condition view first (or (B, 1, ...) with the
        latent cache's batch["latents"] (B, F, 4, h, w) unscaled and batch["clip"] (B, D)); noise_aug (B,);
        aug_noise (B, 3, H, W) unit Gaussian for the condition view."""
        from ...preprocess import clip_preprocess
        from ..conditioning import noise_augment

        frames = batch["frames"]
        b, f = batch["elevation_deg"].shape[:2]
        vae, enc = models.vae, models.image_encoder
        vdtype = next(vae.parameters()).dtype
        cond = frames[:, 0]
        if "latents" in batch:  # latent cache: targets and CLIP embedding precomputed
            context = batch["clip"][:, None, :]
            latents = self.order_frames(batch["latents"]) * models.scale_factor
        else:
            pixels = clip_preprocess(cond.float(), enc.config.image_size)
            context = enc(pixel_values=pixels.to(next(enc.parameters()).dtype)).image_embeds[:, None, :]
            latents = vae.encode(self.order_frames(frames).flatten(0, 1).to(vdtype)).latent_dist.mode()
            latents = latents.unflatten(0, (b, f)) * models.scale_factor
        noisy = noise_augment(cond, noise_aug, aug_noise)
        cond_latent = vae.encode(noisy.to(vdtype)).latent_dist.mode()
        concat = cond_latent[:, None].expand(-1, f, -1, -1, -1)
        ordered = {k: (self.order_frames(v) if k in ("elevation_deg", "azimuth_deg") else v) for k, v in batch.items()}
        return Conditioning(latents.float(), concat.float(), context.float(), self.added_time_ids(noise_aug, ordered))


def register_recipe(cls: Type[Recipe]) -> Type[Recipe]:
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in _RECIPES and _RECIPES[cls.name] is not cls:
        raise ValueError(f"recipe {cls.name!r} is registered twice ({_RECIPES[cls.name].__module__}, {cls.__module__})")
    _RECIPES[cls.name] = cls
    return cls


def _scan() -> None:
    global _SCANNED
    if not _SCANNED:
        for mod in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{mod.name}")
        _SCANNED = True


def recipe_names() -> Tuple[str, ...]:
    _scan()
    return tuple(sorted(_RECIPES))


def get_recipe(name: str) -> Recipe:
    """A recipe by registered name, or `module.path:ClassName`."""
    if ":" in name:
        module, _, cls_name = name.partition(":")
        cls = getattr(importlib.import_module(module), cls_name, None)
        if cls is None or not (isinstance(cls, type) and issubclass(cls, Recipe)):
            raise ValueError(f"recipe {name!r}: {module} has no Recipe subclass {cls_name}")
        return cls()
    _scan()
    if name not in _RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known: {', '.join(sorted(_RECIPES))} (or module.path:ClassName)")
    return _RECIPES[name]()


__all__ = ["Recipe", "Conditioning", "FrozenEncoders", "register_recipe", "get_recipe", "recipe_names"]
