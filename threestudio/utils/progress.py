"""Live progress of a run in `<trial>/progress.json`, for the web app and anyone watching a trial folder.

The file is rewritten atomically (temporary file + rename) at most every `min_interval_s` seconds during
training and at every stage change, so a reader never sees a half-written file. Fields:

    stage        "train" | "validate" | "test" | "export" | "done" | "stopped" | "out_of_memory" | "failed"
    step         optimizer steps done; max_steps the run's target (null when unbounded)
    loss         the last logged `train/loss`; it_per_s an exponential moving average of steps per second
    eta_s        (max_steps - step) / it_per_s, null until known
    latest_image newest `save/it{N}-{i}.png` validation image (path), or null
    video, mesh  `save/it{N}-test.mp4` and `save/it{N}-export/model.glb` once written, else null
    message      free text (the out-of-memory advice, a stop note)
"""
from __future__ import annotations

import glob
import json
import os
import re
import tempfile
import time
from typing import Any, Optional

import pytorch_lightning as pl

PROGRESS_FILE = "progress.json"
_VALIDATION_IMAGE = re.compile(r"^it(\d+)(?:\.\d+)?-(\d+)\.png$")  # it<N>.<k>-: SaverMixin.output_path


def _step_of(path: str) -> int:
    match = re.search(r"it(\d+)", os.path.basename(os.path.dirname(path)) + os.path.basename(path))
    return int(match.group(1)) if match else -1


def latest_outputs(trial_dir: str) -> dict[str, Optional[str]]:
    """Newest validation image, orbit video and GLB mesh of a trial folder (None where absent)."""
    save = os.path.join(trial_dir, "save")
    images = [p for p in glob.glob(os.path.join(save, "it*-*.png")) if _VALIDATION_IMAGE.match(os.path.basename(p))]
    videos = glob.glob(os.path.join(save, "it*-test.mp4"))
    meshes = glob.glob(os.path.join(save, "it*-export", "model.glb"))

    def newest(paths: list[str]) -> Optional[str]:
        return max(paths, key=lambda p: (_step_of(p), os.path.getmtime(p))) if paths else None

    return {"latest_image": newest(images), "video": newest(videos), "mesh": newest(meshes)}


def write_progress(trial_dir: str, state: dict[str, Any]) -> None:
    """Atomically replace `<trial>/progress.json` with `state`."""
    os.makedirs(trial_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=trial_dir, prefix=".progress-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as fp:
            json.dump(state, fp)
        os.replace(tmp, os.path.join(trial_dir, PROGRESS_FILE))
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_progress(trial_dir: str) -> Optional[dict[str, Any]]:
    """The trial's progress state, or None before the run wrote one."""
    try:
        with open(os.path.join(trial_dir, PROGRESS_FILE)) as fp:
            return json.load(fp)
    except (OSError, ValueError):
        return None


def update_progress(trial_dir: str, **fields: Any) -> None:
    """Merge `fields` into the trial's progress file (used by launch.py for the final stage)."""
    state = read_progress(trial_dir) or {}
    state.update(fields)
    state.update(latest_outputs(trial_dir))
    state["time"] = time.time()
    write_progress(trial_dir, state)


class ProgressFileCallback(pl.Callback):
    """Writes the trial's progress.json (see the module docstring). Rank zero only."""

    def __init__(self, trial_dir: str, min_interval_s: float = 1.0, ema: float = 0.3) -> None:
        self.trial_dir = trial_dir
        self.min_interval_s = min_interval_s
        self.ema = ema
        self.state: dict[str, Any] = {"stage": "starting", "step": 0, "max_steps": None, "loss": None,
                                      "it_per_s": None, "eta_s": None, "message": None}
        self._last_write = 0.0
        self._last_step_time: Optional[float] = None

    def _enabled(self, trainer: pl.Trainer) -> bool:
        return trainer.is_global_zero

    def _write(self, force: bool = False) -> None:
        now = time.time()
        if not force and now - self._last_write < self.min_interval_s:
            return
        self._last_write = now
        self.state.update(latest_outputs(self.trial_dir))
        self.state["time"] = now
        write_progress(self.trial_dir, self.state)

    def _stage(self, trainer: pl.Trainer, stage: str) -> None:
        if self._enabled(trainer):
            self.state["stage"] = stage
            self.state["step"] = int(trainer.global_step)
            self._write(force=True)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        max_steps = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        self.state["max_steps"] = max_steps
        self._last_step_time = time.time()
        self._stage(trainer, "train")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not self._enabled(trainer):
            return
        now = time.time()
        if self._last_step_time is not None:
            rate = 1.0 / max(now - self._last_step_time, 1e-6)
            previous = self.state["it_per_s"]
            self.state["it_per_s"] = rate if previous is None else (1 - self.ema) * previous + self.ema * rate
        self._last_step_time = now
        self.state["step"] = int(trainer.global_step)
        loss = trainer.callback_metrics.get("train/loss")
        if loss is not None:
            self.state["loss"] = float(loss)
        if self.state["max_steps"] and self.state["it_per_s"]:
            self.state["eta_s"] = max(self.state["max_steps"] - self.state["step"], 0) / self.state["it_per_s"]
        self._write()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit":
            self._stage(trainer, "validate")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit":
            # the step timer restarts: validation time is not training speed
            self._last_step_time = time.time()
            self._stage(trainer, "train")
        else:
            self._stage(trainer, "validate")

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stage(trainer, "test")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stage(trainer, "test")

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stage(trainer, "export")
