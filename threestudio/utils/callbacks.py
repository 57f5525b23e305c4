"""Lightning callbacks and plugins used by launch.py."""
from __future__ import annotations

import glob
import logging
import os
import shlex
import signal
import sys
import threading
import uuid
from typing import Any, Optional

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from omegaconf import OmegaConf
from pytorch_lightning.callbacks import TQDMProgressBar

from threestudio.utils.config import dump_config
from threestudio.utils.misc import NonFiniteError, nonfinite_tensors, read_checkpoint, summarize_keys

logger = logging.getLogger("threestudio")


def _open_new_file(folder: str, prefix: str, suffix: str) -> tuple[int, str]:
    """A new file opened for writing with the mode every other output gets (0o666 minus the umask;
    tempfile.mkstemp would give 0o600)."""
    while True:
        path = os.path.join(folder, f"{prefix}{uuid.uuid4().hex[:12]}{suffix}")
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), path
        except FileExistsError:
            continue


class _DeferredInterrupt:
    """During a checkpoint write the first Ctrl-C is held back until the file is complete (then the
    handler that was active gets it); a second one aborts the write, leaving the old file untouched."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.received = 0
        self.previous: Any = None
        self.active = threading.current_thread() is threading.main_thread()

    def _handle(self, signum: int, frame: Any) -> None:
        self.received += 1
        if self.received == 1:
            print(f"\nCtrl-C while writing {self.path}: finishing the write so the checkpoint is complete "
                  "(Ctrl-C again to abort it; the previous file then stays as it was).", file=sys.stderr, flush=True)
            return
        raise KeyboardInterrupt

    def __enter__(self) -> "_DeferredInterrupt":
        if self.active:
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.active:
            signal.signal(signal.SIGINT, self.previous)

    def redeliver(self) -> None:
        """Hand a held-back Ctrl-C to the handler that was active before the write."""
        if self.received and self.active:
            if callable(self.previous):
                self.previous(signal.SIGINT, None)
            elif self.previous != signal.SIG_IGN:
                raise KeyboardInterrupt


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoint files are written whole or not at all.

    The checkpoint goes to a temporary file in the same folder, is synced and renamed over the target,
    so a crash or `kill -9` never leaves a truncated checkpoint (a leftover `.tmp-*.ckpt` is removed by
    `remove_orphan_temporaries` on the next run). Non-finite parameters are never written; a Ctrl-C
    during the write is deferred (see `_DeferredInterrupt`). Loading is weights-only.
    """

    def __init__(self) -> None:
        super().__init__()
        self.written: dict[str, int] = {}  # absolute path -> global step last written there

    def save_checkpoint(self, checkpoint: dict, path: Any, storage_options: Optional[Any] = None) -> None:
        path = os.fspath(path)
        bad = nonfinite_tensors(checkpoint.get("state_dict", {}))
        if bad:
            raise NonFiniteError(
                f"Not writing {path}: {len(bad)} parameter tensors are NaN/inf ({summarize_keys(bad)}) at step "
                f"{checkpoint.get('global_step')}. The checkpoints written before are kept as they are.")
        folder = os.path.dirname(path) or "."
        os.makedirs(folder, exist_ok=True)
        fd, tmp = _open_new_file(folder, ".tmp-", ".ckpt")
        guard = _DeferredInterrupt(path)
        try:
            with guard:
                with os.fdopen(fd, "wb") as fp:
                    torch.save(checkpoint, fp)
                    fp.flush()
                    os.fsync(fp.fileno())
                os.replace(tmp, path)
        except BaseException as e:
            if guard.received > 1 or isinstance(e, KeyboardInterrupt):
                # torch's zip writer reports an interrupted write as "unexpected pos": say what happened
                print(f"Checkpoint write aborted by Ctrl-C: {path} was not changed.", file=sys.stderr, flush=True)
                raise KeyboardInterrupt from None
            raise
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        self.written[os.path.abspath(path)] = int(checkpoint.get("global_step", -1))
        guard.redeliver()

    def load_checkpoint(self, path: Any, map_location: Optional[Any] = None, weights_only: Optional[bool] = None
                        ) -> dict:
        # never unpickle code from a checkpoint, whatever Lightning or torch default to; tensors are read to
        # the CPU, Lightning moves them where they belong
        return read_checkpoint(os.fspath(path), "checkpoint")


def remove_orphan_temporaries(folder: str) -> list[str]:
    """Delete `.tmp-*.ckpt` / `*.yaml.tmp` files a hard-killed run left in `folder`; returns them."""
    removed = []
    for pattern in (".tmp-*.ckpt", "*.yaml.tmp"):
        for path in glob.glob(os.path.join(glob.escape(folder), pattern)):
            try:
                os.remove(path)
                removed.append(path)
            except OSError:
                pass
    if removed:
        logger.warning("Removed %d unfinished temporary file(s) of an interrupted run: %s", len(removed),
                       ", ".join(os.path.basename(p) for p in removed))
    return removed


def write_run_record(trial_dir: str, stage: str, raw_config: Any, parsed_config: Any, command: list[str],
                     timestamp: str) -> list[str]:
    """Record a launch in its trial folder without touching an earlier run's record.

    The first training run of a trial writes `configs/raw.yaml` and `configs/parsed.yaml`; every other
    launch (resumed training, validate, test, export) writes `configs/<stage>@<timestamp>.yaml` instead.
    `cmd.txt` gets the command line once per launch. Returns the files written.
    """
    configs = os.path.join(trial_dir, "configs")
    os.makedirs(configs, exist_ok=True)
    remove_orphan_temporaries(configs)
    written = []
    parsed = OmegaConf.structured(parsed_config)
    if stage == "train" and not os.path.exists(os.path.join(configs, "parsed.yaml")):
        for name, config in (("raw.yaml", raw_config), ("parsed.yaml", parsed)):
            dump_config(os.path.join(configs, name), config)
            written.append(os.path.join(configs, name))
    else:
        path = os.path.join(configs, f"{stage}@{timestamp}.yaml")
        n = 1
        while os.path.exists(path):
            n += 1
            path = os.path.join(configs, f"{stage}@{timestamp}-{n}.yaml")
        dump_config(path, parsed)
        written.append(path)
    with open(os.path.join(trial_dir, "cmd.txt"), "a") as fp:
        fp.write(" ".join(shlex.quote(c) for c in command) + "\n")
    return written


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
            print("\nSecond Ctrl-C: exiting now. Completed checkpoints stay in ckpts/.", file=sys.stderr, flush=True)
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
