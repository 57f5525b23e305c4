"""The Lightning system base: config, per-step hooks, weighted losses, checkpoints without frozen priors."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Optional

import pytorch_lightning as pl
import torch
from torch import Tensor

from threestudio.systems.optim import parse_optimizer, parse_scheduler
from threestudio.utils.base import Updateable
from threestudio.utils.config import ConfigError, parse_structured
from threestudio.utils.losses import LOSS_OPTIONS, regularizer_losses
from threestudio.utils.misc import (
    NonFiniteError,
    cleanup,
    get_rank,
    load_module_weights,
    load_partial_state_dict,
    step_seed,
)
from threestudio.utils.saving import SaverMixin
from threestudio.utils.schedule import C, validate_schedule

logger = logging.getLogger("threestudio")
NONFINITE_POLICIES = ("stop", "skip")


class BaseSystem(pl.LightningModule, Updateable, SaverMixin):
    @dataclass
    class Config:
        loggers: dict = field(default_factory=dict)
        # lambda_<name>: schedulable weight of loss term <name>; 0 switches the term off
        loss: dict = field(default_factory=dict)
        optimizer: dict = field(default_factory=dict)
        scheduler: Optional[dict] = None
        # initialise from another trial's checkpoint (parameters only)
        weights: Optional[str] = None
        weights_ignore_modules: Optional[list] = None
        cleanup_after_validation_step: bool = False
        cleanup_after_test_step: bool = False
        test_video_fps: int = 30
        # a NaN/inf loss term or gradient: "stop" the run (checkpoints written so far are kept, none is
        # written after it) or "skip" the step (no parameter update) and count it, stopping after
        # max_nonfinite_skips skipped steps
        on_nonfinite: str = "stop"
        max_nonfinite_skips: int = 100

    cfg: Config
    # Submodules (attribute names) left out of checkpoints: frozen priors are rebuilt from their own files.
    checkpoint_exclude: tuple[str, ...] = ()

    def __init__(self, cfg: Any, config_path: str = "system") -> None:
        super().__init__()
        self.cfg = parse_structured(self.Config, cfg, where=config_path)
        self._loaded_global_step = 0
        self.config_path = config_path
        self.nonfinite_skipped = 0
        for key, value in self.cfg.loss.items():
            if key in LOSS_OPTIONS:
                check, what = LOSS_OPTIONS[key]
                if not check(value):
                    raise ConfigError(f"{config_path}.loss.{key} must be {what}, got {value!r}.")
                continue
            if not key.startswith("lambda_"):
                raise ConfigError(f"{config_path}.loss.{key}: loss weights are named lambda_<term> (other keys: "
                                  f"{', '.join(LOSS_OPTIONS)}).")
            validate_schedule(value, f"{config_path}.loss.{key}")
        if self.cfg.on_nonfinite not in NONFINITE_POLICIES:
            raise ConfigError(f"{config_path}.on_nonfinite must be one of {NONFINITE_POLICIES}, "
                              f"got '{self.cfg.on_nonfinite}'.")
        self.configure()
        if self.cfg.weights is not None:
            self.load_weights(self.cfg.weights, self.cfg.weights_ignore_modules)
        self.post_configure()

    def configure(self) -> None:
        """Build submodules. Called once in __init__."""

    def post_configure(self) -> None:
        """Called after weights are loaded."""

    def load_weights(self, path: str, ignore_modules: Optional[list] = None) -> None:
        state_dict, epoch, global_step = load_module_weights(path, ignore_modules=ignore_modules)
        # frozen priors are never in checkpoints: their absence is expected, not reported
        load_partial_state_dict(self, state_dict, f"{self.config_path}.weights '{path}'", "the system",
                                ignore=self._excluded)
        self.do_update_step(epoch, global_step, on_load_weights=True)

    # ------------------------------------------------------------------ losses
    def loss_weight(self, name: str) -> float:
        """Current weight of loss term `name` (0 when the config does not mention it)."""
        return float(C(self.cfg.loss.get(f"lambda_{name}", 0.0), self.true_current_epoch, self.true_global_step))

    def regularizer_losses(self, out: dict[str, Any]) -> dict[str, Tensor]:
        """The regularisers whose `lambda_<name>` is non-zero now, on renderer output `out`, with the term
        settings of `system.loss` (losses.LOSS_OPTIONS)."""
        return regularizer_losses(out, lambda name: self.loss_weight(name) != 0, self.cfg.loss)

    def combine_losses(self, losses: dict[str, Tensor], prefix: str = "train") -> Tensor:
        """Sum `lambda_<name> * loss` over the terms, logging each term and weight separately."""
        total: Tensor = torch.zeros((), device=self.device)
        nonfinite = []
        for name, value in losses.items():
            weight = self.loss_weight(name)
            self.log(f"{prefix}/loss_{name}", value.detach())
            self.log(f"{prefix}/lambda_{name}", weight)
            if weight != 0:
                if not bool(torch.isfinite(value.detach()).all()):
                    nonfinite.append(f"loss term '{name}'")
                total = total + weight * value
        if prefix == "train" and (nonfinite or not bool(torch.isfinite(total.detach()))):
            # Lightning skips backward and the optimizer step of a training step that returns None
            return self.on_nonfinite(", ".join(nonfinite) or "the total loss")  # type: ignore[return-value]
        self.log(f"{prefix}/loss", total.detach(), prog_bar=True)
        return total

    def on_nonfinite(self, what: str) -> None:
        """Stop (raise NonFiniteError) or count a skipped step, per `system.on_nonfinite`."""
        message = f"step {self.true_global_step}: {what} is not finite (NaN or inf)"
        if self.cfg.on_nonfinite == "stop" or self.nonfinite_skipped >= self.cfg.max_nonfinite_skips:
            if self.cfg.on_nonfinite == "skip":
                message += f" after {self.nonfinite_skipped} skipped steps ({self.config_path}.max_nonfinite_skips)"
            raise NonFiniteError(
                f"{message}. Training stopped; the checkpoints written so far are kept and no checkpoint is "
                f"written from this state. Lower the learning rate or the weight of that loss, or set "
                f"{self.config_path}.on_nonfinite=skip to skip such steps.")
        self.nonfinite_skipped += 1
        logger.warning("%s: step skipped (%d so far, %s.on_nonfinite=skip).", message, self.nonfinite_skipped,
                       self.config_path)
        self.log("train/nonfinite_skipped_steps", float(self.nonfinite_skipped))

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # a finite loss can still give NaN/inf gradients (e.g. a sqrt at 0): never step with them
        named = [(n, p.grad) for n, p in self.named_parameters() if p.grad is not None]
        if not named:
            return
        norms = torch.stack(torch._foreach_norm([g for _, g in named]))
        if bool(torch.isfinite(norms).all()):
            return
        bad = [n for (n, _), v in zip(named, norms) if not bool(torch.isfinite(v))]
        self.on_nonfinite(f"the gradient of {', '.join(bad[:4])}{' ...' if len(bad) > 4 else ''}")
        for group in optimizer.param_groups:  # skip: no parameter is updated at this step
            for p in group["params"]:
                p.grad = None

    # --------------------------------------------------------- step bookkeeping
    @property
    def true_global_step(self) -> int:
        # trainer.test/predict restore weights but not the step: use the checkpoint's step then
        current = self.trainer.global_step if self._trainer is not None else 0
        return max(current, self._loaded_global_step)

    @property
    def true_current_epoch(self) -> int:
        return self.trainer.current_epoch if self._trainer is not None else 0

    @property
    def global_seed(self) -> int:
        return int(os.environ.get("PL_GLOBAL_SEED", 0))

    def seed_step(self, stream: str) -> None:
        # Every step's randomness depends only on (seed, rank, step), so a resumed run equals an
        # uninterrupted one whatever happened in between (validation, a restart).
        torch.manual_seed(step_seed(self.global_seed + get_rank(), self.true_global_step, stream))

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self.seed_step("train")
        self.do_update_step(self.true_current_epoch, self.true_global_step)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.do_update_step_end(self.true_current_epoch, self.true_global_step)

    def on_validation_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.seed_step(f"val{batch_idx}")
        self.do_update_step(self.true_current_epoch, self.true_global_step)

    def on_test_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.seed_step(f"test{batch_idx}")
        self.do_update_step(self.true_current_epoch, self.true_global_step)

    def on_predict_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.seed_step(f"predict{batch_idx}")
        self.do_update_step(self.true_current_epoch, self.true_global_step)

    def on_validation_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.cfg.cleanup_after_validation_step:
            cleanup()

    def on_test_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.cfg.cleanup_after_test_step:
            cleanup()

    def check_training_inputs(self) -> None:
        """Files that only training reads (a frozen prior's checkpoint, a conditioning image) exist: launch.py
        calls this before a training run does any work. Modules opt in by defining the same method."""
        for module in self.modules():
            if module is not self and callable(getattr(module, "check_training_inputs", None)):
                module.check_training_inputs()

    # -------------------------------------------------------------- optimizers
    def configure_optimizers(self) -> dict:
        optimizer = parse_optimizer(self.cfg.optimizer, self)
        result: dict = {"optimizer": optimizer}
        if self.cfg.scheduler is not None:
            result["lr_scheduler"] = parse_scheduler(self.cfg.scheduler, optimizer)
        return result

    # ------------------------------------------------------------- checkpoints
    def _excluded(self, key: str) -> bool:
        return any(key == name or key.startswith(name + ".") for name in self.checkpoint_exclude)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint["state_dict"]
        for key in [k for k in state if self._excluded(k)]:
            del state[key]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # excluded submodules keep the weights they were built with
        state = checkpoint["state_dict"]
        for key, value in self.state_dict().items():
            if self._excluded(key) and key not in state:
                state[key] = value
        self._loaded_global_step = int(checkpoint.get("global_step", 0))
        self.do_update_step(checkpoint.get("epoch", 0), self._loaded_global_step, on_load_weights=True)

    # ------------------------------------------------------------------ saving
    def step_prefix(self) -> str:
        return f"it{self.true_global_step}"
