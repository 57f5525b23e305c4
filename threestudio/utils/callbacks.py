"""Lightning callbacks and plugins used by launch.py."""
from __future__ import annotations

import logging
import os
import shlex
import signal
import sys
import tempfile
from typing import Any, Optional

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from omegaconf import OmegaConf
from pytorch_lightning.callbacks import TQDMProgressBar
from pytorch_lightning.utilities import rank_zero_only

from threestudio.utils.config import dump_config

logger = logging.getLogger("threestudio")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints are written to a temporary file in the same folder, then renamed over the target:
    a crash mid-write never leaves a truncated checkpoint."""

    def save_checkpoint(self, checkpoint: dict, path: Any, storage_options: Optional[Any] = None) -> None:
        path = os.fspath(path)
        folder = os.path.dirname(path) or "."
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".ckpt")
        try:
            with os.fdopen(fd, "wb") as fp:
                torch.save(checkpoint, fp)
                fp.flush()
                os.fsync(fp.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)


class ConfigSnapshotCallback(pl.Callback):
    """Writes `cmd.txt`, `configs/raw.yaml` and `configs/parsed.yaml` into the trial folder."""

    def __init__(self, trial_dir: str, raw_config: Any, parsed_config: Any, command: list[str]) -> None:
        self.trial_dir = trial_dir
        self.command = command
        self.raw_config = raw_config
        self.parsed_config = parsed_config

    @rank_zero_only
    def write(self) -> None:
        os.makedirs(os.path.join(self.trial_dir, "configs"), exist_ok=True)
        dump_config(os.path.join(self.trial_dir, "configs", "raw.yaml"), self.raw_config)
        dump_config(os.path.join(self.trial_dir, "configs", "parsed.yaml"), OmegaConf.structured(self.parsed_config))
        with open(os.path.join(self.trial_dir, "cmd.txt"), "a") as fp:
            fp.write(" ".join(shlex.quote(c) for c in self.command) + "\n")

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.write()


class GracefulInterruptCallback(pl.Callback):
    """First Ctrl-C during training: finish the current step, stop training (launch.py then saves
    `last.ckpt` and runs the test stage). Second Ctrl-C: exit at once."""

    def __init__(self) -> None:
        self.interrupted = False
        self._trainer: Optional[pl.Trainer] = None
        self._previous: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.interrupted:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        self.interrupted = True
        print("\nCtrl-C: stopping after this step, saving last.ckpt, then running the test stage. "
              "Press Ctrl-C again to exit now.", file=sys.stderr, flush=True)
        if self._trainer is not None:
            self._trainer.should_stop = True

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._trainer = trainer
        self._previous = signal.signal(signal.SIGINT, self._handle)

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if self.interrupted:
            trainer.should_stop = True

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # a Ctrl-C from now on (test stage) exits as usual
        signal.signal(signal.SIGINT, signal.default_int_handler if self.interrupted else self._previous)


class ProgressBar(TQDMProgressBar):
    """Shows the step count (not an endless epoch) with it/s and the logged loss."""

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if trainer.max_steps and trainer.max_steps > 0:
            self.train_progress_bar.total = trainer.max_steps
            self.train_progress_bar.n = trainer.global_step
            self.train_progress_bar.set_description(f"step {trainer.global_step}")
