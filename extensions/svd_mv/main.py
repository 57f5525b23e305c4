"""The SVD-MV seed's command line (king159/svd-mv `main.py`), as a thin alias of `sv3d.train`:

    python -m accelerate.commands.launch --config_file accelerate_config/deepspeed_zero_2_one_gpu.yaml \
        main.py train train_config/train_local_svd_mv.yaml [key=value ...]

The reference's flat YAML keys are translated to sv3d.training's config (table `REFERENCE_KEYS`); `key=value`
overrides after the YAML use sv3d.train's names (e.g. `pretrained=/ckpt/svd_xt.safetensors max_steps=10`).
Without CUDA use `accelerate_config/cpu.yaml` (DeepSpeed needs a GPU). `main.py eval` is not provided: validation
orbits are written during training (`validation.*`).
"""

from __future__ import annotations

import math
import os
import sys
import warnings

import yaml

# reference key -> sv3d.training config key (None: accepted and ignored, with the reason)
REFERENCE_KEYS = {
    "batch_size": "batch_size",
    "learning_rate": "optim.learning_rate",
    "weight_decay": "optim.weight_decay",
    "lr_scheduler": "optim.lr_scheduler",
    "warmup_steps": "optim.warmup_steps",
    "max_grad_norm": "optim.max_grad_norm",
    "gradient_checkpointing": "gradient_checkpointing",
    "gradient_accumulation_steps": "gradient_accumulation_steps",
    "num_frames": "data.num_frames",
    "num_examples": "data.max_objects",
    "num_inference_steps": "validation.num_steps",
    "eval_num_examples": "validation.num_objects",
    "eval_every_step": "validation.every_n_steps",
    "save_every_step": "checkpoint_every_n_steps",
    "p_mean": "loss.p_mean",
    "p_std": "loss.p_std",
    "condition_p_mean": "loss.noise_aug_mean",
    "condition_p_std": "loss.noise_aug_std",
    "cfg_rate": "loss.cfg_rate",
    "use_ema": "ema.enabled",
    "ema_decay": "ema.decay",
    "freeze_spatial": "freeze_spatial",
    "freeze_temporal": "freeze_temporal",
    "seed": "seed",
    "resume": "resume",
    "pretrained": "pretrained",
    "pretrained_model_path": "pretrained",
}
IGNORED = {
    "dataset_type": "only the image-folder (svd_meta.jsonl) reader exists in the reference",
    "eval_metric_names": "PSNR/CLIP/LPIPS evaluation is not part of sv3d.train (validation writes orbits)",
    "report_to": "logs go to TensorBoard (<output_dir>/tb_logs)",
    "project_name": "wandb project (TensorBoard is used)",
    "eval_batch_size": "validation samples one object at a time",
    "multi_view": "always multiview",
    "optimizer": "AdamW (the reference's default)",
    "i2v_config_path": "unused by the reference",
    "drop_last": "clips are drawn by position; no last partial batch exists",
    "lora": "use lora.enabled=true (peft) instead",
    "load_model_path": "use pretrained=<single file>",
}
LR_SCHEDULERS = {"constant": "constant_with_warmup"}  # the reference's 'constant' still warms up (warmup_steps)


def _split_dataset_path(value: str):
    """'image_root\\nmeta.jsonl' (the reference's spelling) or a meta path alone."""
    if "\n" in value:
        root, meta = value.split("\n", 1)
        return root.strip(), meta.strip()
    return os.path.dirname(value), value


def translate(ref: dict) -> list:
    """The reference YAML as sv3d.train `key=value` overrides."""
    out = ["recipe=svd_mv", "loss.weighting=svd_mv_reference", "loss.cfg_mode=batch"]
    epochs = None
    for key, value in ref.items():
        if key in ("num_epoch", "num_epochs"):
            epochs = int(value)
        elif key == "train_dataset_path":
            root, meta = _split_dataset_path(str(value))
            out += [f"data.root={root}", f"data.meta={meta}", "data.format=svd_meta"]
        elif key == "eval_dataset_path":
            root, meta = _split_dataset_path(str(value))
            out += [f"validation.root={root}", f"validation.meta={meta}", "validation.format=svd_meta"]
        elif key == "exp_name":
            out.append(f"output_dir=outputs/{value}")
        elif key == "lr_scheduler":
            out.append(f"optim.lr_scheduler={LR_SCHEDULERS.get(value, value)}")
        elif key in REFERENCE_KEYS:
            out.append(f"{REFERENCE_KEYS[key]}={'null' if value is None else value}")
        elif key in IGNORED:
            warnings.warn(f"{key!r} ignored: {IGNORED[key]}", stacklevel=2)
        else:
            raise SystemExit(f"error: unknown key {key!r} in the training YAML (known: {', '.join(sorted(REFERENCE_KEYS))})")
    if epochs is not None:
        meta = next((o.split("=", 1)[1] for o in out if o.startswith("data.meta=")), None)
        n = sum(1 for line in open(meta) if line.strip()) if meta and os.path.isfile(meta) else 1
        world = int(os.environ.get("WORLD_SIZE", "1"))
        per_step = int(ref.get("batch_size", 2)) * world * int(ref.get("gradient_accumulation_steps", 1))
        out.append(f"max_steps={max(1, epochs * math.floor(n / per_step) or epochs)}")
    return out


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 2 or argv[0] not in ("train", "eval"):
        print("usage: main.py train <train_config.yaml> [key=value ...]", file=sys.stderr)
        return 2
    if argv[0] == "eval":
        print("error: `main.py eval` is not provided; validation orbits are written during training", file=sys.stderr)
        return 2
    with open(argv[1]) as f:
        ref = yaml.safe_load(f) or {}
    from sv3d.train import main as train_main

    return train_main(translate(ref) + argv[2:])


if __name__ == "__main__":
    sys.exit(main())
