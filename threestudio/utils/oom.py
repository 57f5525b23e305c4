"""Out of memory mid-run: save a resumable `last.ckpt` and tell the user the next memory preset down."""
from __future__ import annotations

import logging
import os
import shlex
from typing import Any, Optional

import pytorch_lightning as pl
import torch

from threestudio.utils.presets import next_preset_down

logger = logging.getLogger("threestudio")

OOM_EXIT_CODE = 4  # 2: bad input, 3: training diverged (NaN/inf)


def is_out_of_memory(exc: BaseException) -> bool:
    """torch.OutOfMemoryError (CUDA / MPS / CPU allocator) or the RuntimeError older code paths raise."""
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


def oom_advice(trial_dir: str, system_type: str, preset_applied: Optional[str], step: int) -> str:
    """The message printed after an out-of-memory error: what was saved and the command to resume with less."""
    parsed = os.path.join(trial_dir, "configs", "parsed.yaml")
    ckpt = os.path.join(trial_dir, "ckpts", "last.ckpt")
    resume = (f"python launch.py --config {shlex.quote(parsed)} --train resume={shlex.quote(ckpt)}")
    lines = [f"Out of memory at step {step}. Saved a resumable checkpoint: {ckpt}"]
    if system_type in ("mvdream-system", "sv3d-system"):
        down = next_preset_down(preset_applied)
        if down is None:
            lines.append("Already at the smallest preset (8gb): lower data.width/height or the batch by hand, "
                         f"then resume:\n  {resume} data.width=... data.height=...")
        else:
            current = f" (the run used preset={preset_applied})" if preset_applied else ""
            lines.append(f"Next preset down: preset={down}{current}. Resume with less memory:\n"
                         f"  {resume} preset={down}")
    else:
        lines.append(f"Lower data.batch_size or the render resolution, then resume:\n  {resume} data.batch_size=...")
    return "\n".join(lines)


class OutOfMemoryCheckpoint(pl.Callback):
    """On an out-of-memory exception during fit: free the cache and save `<trial>/ckpts/last.ckpt` (the state after
    the last finished step: the failing step never reached the optimizer). launch.py prints the advice."""

    def __init__(self, trial_dir: str) -> None:
        self.trial_dir = trial_dir
        self.saved_at_step: Optional[int] = None

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if not is_out_of_memory(exception) or trainer.state.fn != "fit":
            return
        pl_module.zero_grad(set_to_none=True)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        # The failed batch was started but never processed. Roll its counters back so the checkpoint looks saved
        # right after the last finished batch: Lightning then resumes at that step without counting the failed
        # batch (otherwise the logged step runs one ahead of the optimizer step after resuming).
        progress = trainer.fit_loop.epoch_loop.batch_progress
        for tracker in (progress.total, progress.current):
            tracker.ready = tracker.started = tracker.processed = tracker.completed
        path = os.path.join(self.trial_dir, "ckpts", "last.ckpt")
        try:
            trainer.save_checkpoint(path)
        except Exception as e:  # noqa: BLE001 - reported; the original error is re-raised by Lightning
            logger.error("Out of memory, and saving %s failed too: %s", path, e)
            return
        self.saved_at_step = int(trainer.global_step)


def handle_out_of_memory(exc: BaseException, callback: OutOfMemoryCheckpoint, cfg: Any) -> int:
    """Print the advice for an OOM that escaped trainer.fit, record it in progress.json; the exit code."""
    import sys

    from threestudio.utils.progress import update_progress

    step = callback.saved_at_step if callback.saved_at_step is not None else -1
    if callback.saved_at_step is None:
        message = f"Out of memory ({exc}); no checkpoint could be saved."
    else:
        message = oom_advice(cfg.trial_dir, cfg.system_type, cfg.preset_applied, step)
    print(message, file=sys.stderr, flush=True)
    update_progress(cfg.trial_dir, stage="out_of_memory", message=message)
    return OOM_EXIT_CODE
