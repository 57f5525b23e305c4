"""`mvdream-system`: text-to-3D with the MVDream multiview prior (x0-SDS), as in MVDream-threestudio."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

import threestudio
from threestudio.systems.lift3d import BaseLift3DSystem
from threestudio.utils.base import Updateable, build_module
from threestudio.utils.config import ConfigError, parse_structured
from threestudio.utils.misc import cleanup

LOSS_TERMS = ("sds", "orient", "sparsity", "opaque", "z_variance", "normal_consistency", "laplacian_smoothness")


def orient_loss(out: dict[str, Tensor]) -> Tensor:
    """Penalise normals facing away from the camera, weighted by each sample's (detached) weight.

    sum_i w_i * max(0, n_i . d_i)^2 / #rays that hit something (DreamFusion's orientation loss)."""
    for key in ("normal", "weights", "t_dirs"):
        if key not in out:
            raise ConfigError(
                f"system.loss.lambda_orient > 0 needs per-sample normals ('{key}' missing from the renderer output): "
                "set system.geometry.normal_type (e.g. 'analytic') and use a material that needs normals, "
                "or set lambda_orient to 0."
            )
    facing = (out["normal"] * out["t_dirs"]).sum(dim=-1, keepdim=True).clamp_min(0.0)
    n_hit = (out["opacity"] > 0).sum().clamp_min(1)
    return (out["weights"].detach() * facing ** 2).sum() / n_hit


def sparsity_loss(out: dict[str, Tensor]) -> Tensor:
    return (out["opacity"] ** 2 + 0.01).sqrt().mean()


def opaque_loss(out: dict[str, Tensor]) -> Tensor:
    """Binary entropy of the opacity: pushes every pixel towards fully empty or fully opaque."""
    p = out["opacity"].clamp(1e-3, 1.0 - 1e-3)
    return F.binary_cross_entropy(p, p)


def z_variance_loss(out: dict[str, Tensor]) -> Tensor:
    """HiFA's depth variance along opaque rays: favours one sharp surface per ray (fewer floaters)."""
    mask = out["opacity"] > 0.5
    if not mask.any():
        return out["z_variance"].sum() * 0.0
    return out["z_variance"][mask].mean()


_REGULARISERS = {"orient": orient_loss, "sparsity": sparsity_loss, "opaque": opaque_loss, "z_variance": z_variance_loss}


@threestudio.register("mvdream-system")
class MVDreamSystem(BaseLift3DSystem):
    """NeRF + frozen MVDream guidance. The prior and the text embeddings are built when training starts,
    so `--test`, `--validate` and `--export` need neither the MVDream checkpoint nor its memory."""

    @dataclass
    class Config(BaseLift3DSystem.Config):
        guidance_type: str = "mvdream-multiview-diffusion-guidance"
        guidance: dict = field(default_factory=dict)
        prompt_processor_type: str = "mvdream-prompt-processor"
        prompt_processor: dict = field(default_factory=dict)
        # the MindSpore port's switch (seed docs): recompute the guidance's VAE-encoder activations in
        # backward to save memory; same as system.guidance.gradient_checkpointing=true
        use_recompute: bool = False

    cfg: Config
    # the prior is rebuilt from its own file; trial checkpoints only hold the 3D model
    checkpoint_exclude = ("guidance", "prompt_processor")

    def configure(self) -> None:
        super().configure()
        unknown = [k for k in self.cfg.loss if k.removeprefix("lambda_") not in LOSS_TERMS]
        if unknown:
            raise ConfigError(
                f"system.loss: unknown term(s) {unknown}; mvdream-system has lambda_{', lambda_'.join(LOSS_TERMS)}."
            )
        # validate the prior's options now (a typo must fail before any work), build it at fit start
        guidance_cfg = dict(self.cfg.guidance)
        if self.cfg.use_recompute:
            guidance_cfg["gradient_checkpointing"] = True
        self._guidance_cfg = guidance_cfg
        parse_structured(threestudio.find(self.cfg.guidance_type).Config, guidance_cfg, where="system.guidance")
        parse_structured(threestudio.find(self.cfg.prompt_processor_type).Config, self.cfg.prompt_processor,
                         where="system.prompt_processor")
        self.guidance: Optional[torch.nn.Module] = None
        self.prompt_processor: Any = None
        self.prompt_utils: Any = None

    def extra_updateables(self) -> list[Updateable]:
        return [self.prompt_processor] if isinstance(self.prompt_processor, Updateable) else []

    # ------------------------------------------------------------------ prior
    def build_prior(self) -> None:
        """Text embeddings first (their encoder is freed before the UNet loads), then the guidance."""
        if self.guidance is not None:
            return
        self.prompt_processor = build_module(self.cfg.prompt_processor_type, self.cfg.prompt_processor,
                                             "system.prompt_processor")
        self.prompt_utils = self.prompt_processor()
        guidance = build_module(self.cfg.guidance_type, self._guidance_cfg, "system.guidance")
        self.guidance = guidance.to(self.device)
        if self._trainer is not None:
            self.guidance.update_step(self.true_current_epoch, self.true_global_step)

    def release_prior(self) -> None:
        self.guidance = None
        self.prompt_processor = None
        self.prompt_utils = None
        cleanup()

    def on_fit_start(self) -> None:
        self.build_prior()
        # the frozen prior is in eval mode on purpose; Lightning would warn about each of its modules
        warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")

    def on_fit_end(self) -> None:
        # testing and exporting after training do not need the prior's memory
        self.release_prior()

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        if self.guidance is None:
            self.build_prior()
        out = self(batch)
        guidance_out = self.guidance(out["comp_rgb"], self.prompt_utils, **batch)
        losses = {"sds": guidance_out["loss_sds"]}
        for name, value in guidance_out.items():
            if not name.startswith("loss_"):
                self.log(f"train/{name}", value)
        for name, fn in _REGULARISERS.items():
            if self.loss_weight(name) != 0:
                losses[name] = fn(out)
        losses.update(self.mesh_losses(out))
        return self.combine_losses(losses)
