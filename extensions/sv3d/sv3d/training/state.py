"""Run state saved next to `accelerator.save_state` without pickles: step, lr scheduler and EMA as JSON + safetensors."""

from __future__ import annotations

import json
import os
from typing import Optional

import torch

TRAIN_STATE = "sv3d_train_state.json"
EMA_FILE = "sv3d_ema.safetensors"


def save_run_state(ckpt_dir: str, global_step: int, scheduler, ema=None) -> None:
    state = {"global_step": int(global_step), "scheduler": scheduler.state_dict()}
    if ema is not None:
        from safetensors.torch import save_file

        sd = ema.state_dict()
        shadow = sd.pop("shadow_params")
        save_file({f"{i:05d}": t.detach().cpu().contiguous() for i, t in enumerate(shadow)}, os.path.join(ckpt_dir, EMA_FILE))
        state["ema"] = {k: v for k, v in sd.items() if isinstance(v, (int, float, bool, str)) or v is None}
    with open(os.path.join(ckpt_dir, TRAIN_STATE), "w") as f:
        json.dump(state, f, indent=1, default=lambda o: None)


def load_run_state(ckpt_dir: str, scheduler, ema=None) -> int:
    path = os.path.join(ckpt_dir, TRAIN_STATE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{ckpt_dir} is not a sv3d.train checkpoint (no {TRAIN_STATE})")
    with open(path) as f:
        state = json.load(f)
    sched = state["scheduler"]
    sched.pop("lr_lambdas", None)  # functions: rebuilt from the config, not restored
    scheduler.load_state_dict({**scheduler.state_dict(), **sched})
    if ema is not None:
        from safetensors.torch import load_file

        shadow = load_file(os.path.join(ckpt_dir, EMA_FILE))
        ema_state = ema.state_dict()
        ema_state.update(state.get("ema", {}))
        ema_state["shadow_params"] = [shadow[k] for k in sorted(shadow)]
        ema.load_state_dict(ema_state)
    return int(state["global_step"])


def latest_checkpoint(checkpoints_dir: str) -> Optional[str]:
    if not os.path.isdir(checkpoints_dir):
        return None
    steps = sorted(d for d in os.listdir(checkpoints_dir) if d.startswith("step_") and os.path.isfile(os.path.join(checkpoints_dir, d, TRAIN_STATE)))
    return os.path.join(checkpoints_dir, steps[-1]) if steps else None
