"""`mvdream-system`: text-to-3D with the MVDream multiview prior (x0-SDS), as in MVDream-threestudio."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

import threestudio
from threestudio.systems.lift3d import BaseLift3DSystem
from threestudio.utils.base import Updateable, build_module
from threestudio.utils.config import ConfigError, parse_structured
from threestudio.utils.losses import LOSS_OPTIONS, REGULARIZERS
from threestudio.utils.misc import cleanup

LOSS_TERMS = ("sds", *REGULARIZERS)


@threestudio.register("mvdream-system")
class MVDreamSystem(BaseLift3DSystem):
    """NeRF + frozen MVDream guidance. The prior (in the guidance's `FrozenPrior`) and the text embeddings are
    loaded when training starts, so `--test`, `--validate` and `--export` need neither the MVDream checkpoint
    nor its memory."""

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

    def configure(self) -> None:
        super().configure()
        unknown = [k for k in self.cfg.loss if k not in LOSS_OPTIONS and k.removeprefix("lambda_") not in LOSS_TERMS]
        if unknown:
            raise ConfigError(
                f"system.loss: unknown term(s) {unknown}; mvdream-system has lambda_{', lambda_'.join(LOSS_TERMS)}."
            )
        guidance_cfg = dict(self.cfg.guidance)
        if self.cfg.use_recompute:
            guidance_cfg["gradient_checkpointing"] = True
        # checks its options and reads nothing; the prior loads at fit start
        self.guidance = build_module(self.cfg.guidance_type, guidance_cfg, "system.guidance")
        # validate the prompt processor's options now (a typo must fail before any work), build it at fit start
        parse_structured(threestudio.find(self.cfg.prompt_processor_type).Config, self.cfg.prompt_processor,
                         where="system.prompt_processor")
        self.prompt_processor: Any = None
        self.prompt_utils: Any = None

    def extra_updateables(self) -> list[Updateable]:
        return [self.prompt_processor] if isinstance(self.prompt_processor, Updateable) else []

    # ------------------------------------------------------------------ prior
    def build_prior(self) -> None:
        """Text embeddings first (their encoder is freed before the UNet loads), then the guidance's prior."""
        if self.prompt_utils is None:
            self.prompt_processor = build_module(self.cfg.prompt_processor_type, self.cfg.prompt_processor,
                                                 "system.prompt_processor")
            self.prompt_utils = self.prompt_processor()
        self.guidance.load_prior()

    def release_prior(self) -> None:
        self.guidance.prior.release()
        self.prompt_processor = None
        self.prompt_utils = None
        cleanup()

    def on_fit_start(self) -> None:
        self.build_prior()

    def on_fit_end(self) -> None:
        # testing and exporting after training do not need the prior's memory
        self.release_prior()

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        if self.prompt_utils is None:
            self.build_prior()
        out = self(batch)
        guidance_out = self.guidance(out["comp_rgb"], self.prompt_utils, **batch)
        losses = {"sds": guidance_out["loss_sds"]}
        for name, value in guidance_out.items():
            if not name.startswith("loss_"):
                self.log(f"train/{name}", value)
        losses.update(self.regularizer_losses(out))
        return self.combine_losses(losses)
