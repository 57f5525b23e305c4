"""The EDM fine-tuning loop of the SVD family on accelerate (DDP, DeepSpeed ZeRO-2/3, CPU).

As in the SVD-MV reference, only the UNet and the optimizer go through `accelerator.prepare`; the data is sharded
by rank by hand (`RankBatchSampler`), and every random draw is keyed by (seed, sample position) so that a run gives
the same result for any number of processes with the same global batch, and a resumed run equals an uninterrupted
one (see `randomness`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

import torch

from .conditioning import apply_cfg_dropout, cfg_keep_mask
from .config import TrainConfig
from .data_readers import read_dataset
from .dataset import OrbitClipDataset, RankBatchSampler, collate_clips
from .export import export_trained
from .loss import edm_training_loss
from .models import add_lora, load_source_models, merged_lora_state_dict, set_trainable
from .randomness import STREAM_BATCH, STREAM_TRAIN, keyed_generator
from .recipes import FrozenEncoders, get_recipe
from .state import latest_checkpoint, load_run_state, save_run_state

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    global_step: int
    losses: List[float] = field(default_factory=list)  # rank-averaged loss of each optimizer step of this run
    export: Dict[str, str] = field(default_factory=dict)
    validation: List[Dict[str, str]] = field(default_factory=list)


def draw_clip_randomness(positions, seed: int, num_frames: int, latent_hw, image_hw, cfg: TrainConfig):
    """Per-clip draws, each from its own keyed generator, in a fixed order: sigma, latent noise, noise-aug
    strength, pixel noise of the condition view, CFG coin (CLIP embedding, or both), CFG coin (condition latents in
    "independent" mode)."""
    sig, noise, aug, aug_noise, coin, coin2 = [], [], [], [], [], []
    for p in positions:
        g = keyed_generator(seed, STREAM_TRAIN, int(p))
        sig.append(torch.exp(cfg.loss.p_mean + cfg.loss.p_std * torch.randn(1, generator=g)))
        noise.append(torch.randn((num_frames, 4, *latent_hw), generator=g))
        aug.append(torch.exp(cfg.loss.noise_aug_mean + cfg.loss.noise_aug_std * torch.randn(1, generator=g)))
        aug_noise.append(torch.randn((3, *image_hw), generator=g))
        coin.append(torch.rand(1, generator=g))
        coin2.append(torch.rand(1, generator=g))  # second coin: the condition latents' in "independent" CFG mode
    return torch.cat(sig), torch.stack(noise), torch.cat(aug), torch.stack(aug_noise), torch.cat(coin), torch.cat(coin2)


def _warmup_steps(cfg: TrainConfig) -> int:
    w = cfg.optim.warmup_steps
    return int(math.floor(w * cfg.max_steps)) if w < 1 else int(w)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


def train(cfg: TrainConfig, accelerator=None) -> TrainResult:
    """Run (or resume) a fine-tuning run described by `cfg`; returns the step reached and the logged losses."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    recipe = get_recipe(cfg.recipe)
    out = cfg.output_dir
    ckpt_root = os.path.join(out, "checkpoints")
    # ---- everything that can be wrong with the inputs is checked before any model is built
    objects = read_dataset(cfg.data.root, cfg.data.format, cfg.data.meta, cfg.data.hi3d_elevations, cfg.data.hi3d_views_per_ring)
    if cfg.data.max_objects:
        objects = objects[: cfg.data.max_objects]
    dataset = OrbitClipDataset(objects, cfg.data.num_frames, cfg.data.resolution, cfg.seed, cfg.data.random_roll,
                               latent_cache=cfg.data.latent_cache)
    val_dataset = None
    if cfg.validation.root or cfg.validation.meta:
        val_objects = read_dataset(cfg.validation.root or "", cfg.validation.format, cfg.validation.meta,
                                   cfg.data.hi3d_elevations, cfg.data.hi3d_views_per_ring)
        val_dataset = OrbitClipDataset(val_objects, cfg.validation.num_frames or cfg.data.num_frames, cfg.data.resolution,
                                       cfg.seed, random_roll=False, shuffle=False)
    resume_dir = None
    if cfg.resume:
        resume_dir = latest_checkpoint(ckpt_root) if cfg.resume == "latest" else cfg.resume
        if resume_dir is None or not os.path.isdir(resume_dir):
            raise FileNotFoundError(f"resume={cfg.resume!r}: no checkpoint found (looked in {ckpt_root})")
    elif latest_checkpoint(ckpt_root) is not None:
        raise FileExistsError(f"{out} already holds checkpoints; pass resume=latest to continue it, or another output_dir")

    if accelerator is None:
        accelerator = Accelerator(
            # without CUDA, processes started by torchrun (accelerate's multi-process launcher) join over gloo
            cpu=not torch.cuda.is_available(),
            gradient_accumulation_steps=cfg.gradient_accumulation_steps,
            log_with="tensorboard" if cfg.tensorboard else None,
            project_config=ProjectConfiguration(project_dir=out, logging_dir=os.path.join(out, "tb_logs")),
        )
    ds_plugin = accelerator.state.deepspeed_plugin
    zero3 = ds_plugin is not None and int(ds_plugin.zero_stage) == 3
    if zero3 and (cfg.ema.enabled or cfg.lora.enabled):
        raise ValueError("ema.enabled and lora.enabled need the full parameters on every rank: use ZeRO-2 (or DDP), not ZeRO-3")
    if zero3 and val_dataset is not None:
        accelerator.print("validation orbits are skipped under ZeRO-3 (parameters are sharded); sample the exports instead")
        val_dataset = None
    if ds_plugin is not None:
        ds_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = cfg.batch_size
        ds_plugin.deepspeed_config["gradient_clipping"] = cfg.optim.max_grad_norm or 0.0
    world, rank = accelerator.num_processes, accelerator.process_index
    accelerator.print(f"sv3d.train: recipe {recipe.name}, {world} process(es) [{accelerator.distributed_type}], "
                      f"{len(dataset)} objects, global batch {cfg.batch_size * world * cfg.gradient_accumulation_steps}")
    torch.manual_seed(cfg.seed + rank)  # anything outside the keyed draws (e.g. LoRA dropout) differs per rank
    weight_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(str(accelerator.mixed_precision), torch.float32)

    # ---- models
    src = load_source_models(cfg.pretrained, recipe, cfg.seed, cfg.original_config)
    unet = src.unet
    if cfg.lora.enabled:
        add_lora(unet, cfg.lora.rank, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.target_modules, cfg.lora.extra_trainable)
    else:
        set_trainable(unet, cfg.freeze_spatial, cfg.freeze_temporal)
    if cfg.gradient_checkpointing and cfg.checkpointing_granularity == "block":
        unet.enable_block_checkpointing()
    elif cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    for module in (src.vae, src.image_encoder):
        module.to(accelerator.device)
        if weight_dtype != torch.float32:
            module.to(weight_dtype)
    frozen = FrozenEncoders(src.vae, src.image_encoder, src.source_spec.scale_factor)
    recipe.setup(cfg, accelerator.device, weight_dtype)
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.optim.learning_rate, betas=tuple(cfg.optim.betas),
                                  weight_decay=cfg.optim.weight_decay, eps=cfg.optim.eps)
    # the scheduler is stepped by hand once per optimizer step (a prepared scheduler steps once per process)
    scheduler = get_scheduler(cfg.optim.lr_scheduler, optimizer, num_warmup_steps=_warmup_steps(cfg), num_training_steps=cfg.max_steps)
    unet, optimizer = accelerator.prepare(unet, optimizer)
    ema = EMAModel(accelerator.unwrap_model(unet).parameters(), decay=cfg.ema.decay) if cfg.ema.enabled else None
    if ema is not None:
        ema.to(accelerator.device)

    global_step = 0
    if resume_dir is not None:
        accelerator.load_state(resume_dir)
        global_step = load_run_state(resume_dir, scheduler, ema)
        accelerator.print(f"resumed from {resume_dir} at step {global_step}")
    if accelerator.is_main_process:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "config.json"), "w") as f:
            json.dump(asdict(cfg), f, indent=1)
        if cfg.tensorboard:
            accelerator.init_trackers("sv3d_train", config=_flat(asdict(cfg)))

    accum = cfg.gradient_accumulation_steps
    sampler = RankBatchSampler(cfg.batch_size, world, rank, global_step * accum, cfg.max_steps * accum)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_clips, num_workers=cfg.data.num_workers)
    f, res = cfg.data.num_frames, cfg.data.resolution
    latent_hw, image_hw = (res // 8, res // 8), (res, res)

    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.max_steps, initial=global_step, disable=not (accelerator.is_main_process and cfg.progress_bar),
               desc=f"{recipe.name}", dynamic_ncols=True)
    result = TrainResult(global_step)
    micro = global_step * accum
    window: List[torch.Tensor] = []
    log_path = os.path.join(out, "train_log.jsonl")
    for batch in loader:
        sigma, noise, aug, aug_noise, coin, coin2 = draw_clip_randomness(batch["position"].tolist(), cfg.seed, f, latent_hw, image_hw, cfg)
        if cfg.loss.cfg_mode == "batch":
            coin = torch.rand(1, generator=keyed_generator(cfg.seed, STREAM_BATCH, micro))
        dev = accelerator.device
        batch = {k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        with accelerator.accumulate(unet):
            cond = recipe.conditioning(batch, frozen, aug.to(dev), aug_noise.to(dev))
            keep = cfg_keep_mask(len(sigma), cfg.loss.cfg_rate, cfg.loss.cfg_mode, coin).to(dev)
            if cfg.loss.cfg_mode == "independent":
                keep_concat = cfg_keep_mask(len(sigma), cfg.loss.cfg_rate, "independent", coin2).to(dev)
                concat, context = apply_cfg_dropout(cond.concat, cond.context, keep_concat, keep_context=keep)
            else:
                concat, context = apply_cfg_dropout(cond.concat, cond.context, keep)
            if "concat" not in recipe.cfg_dropped:
                concat = cond.concat
            if "context" not in recipe.cfg_dropped:
                context = cond.context
            with accelerator.autocast():
                loss = edm_training_loss(unet, cond.latents, sigma.to(dev), noise.to(dev), concat, context,
                                         cond.added_time_ids.to(dev), cfg.loss.weighting)
            accelerator.backward(loss)
            if accelerator.sync_gradients and cfg.optim.max_grad_norm > 0:
                accelerator.clip_grad_norm_(params, cfg.optim.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        micro += 1
        window.append(loss.detach().float())
        if not accelerator.sync_gradients:
            continue
        scheduler.step()
        global_step += 1
        if ema is not None:
            ema.step(accelerator.unwrap_model(unet).parameters())
        step_loss = accelerator.gather(torch.stack(window).mean()[None]).mean().item()
        window = []
        result.losses.append(step_loss)
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
        if global_step % max(1, cfg.log_every_n_steps) == 0 and accelerator.is_main_process:
            logs = {"train/loss": step_loss, "train/lr": scheduler.get_last_lr()[0],
                    "train/sigma_mean": float(sigma.mean()), "train/log_sigma_mean": float(sigma.log().mean()),
                    "train/noise_aug_mean": float(aug.mean())}
            if cfg.tensorboard:
                accelerator.log(logs, step=global_step)
            with open(log_path, "a") as fh:
                fh.write(json.dumps({"step": global_step, **logs}) + "\n")
        last = global_step >= cfg.max_steps
        if cfg.checkpoint_every_n_steps and (global_step % cfg.checkpoint_every_n_steps == 0 or last):
            save_checkpoint(accelerator, ckpt_root, global_step, scheduler, ema, cfg.checkpoints_total_limit)
        if val_dataset is not None and (last or (cfg.validation.every_n_steps and global_step % cfg.validation.every_n_steps == 0)):
            result.validation = validate(accelerator, cfg, recipe, unet, frozen, val_dataset, global_step, ema, src.source_version)
        if last or (cfg.export_every_n_steps and global_step % cfg.export_every_n_steps == 0):
            result.export = export(accelerator, cfg, recipe, unet, src, global_step, ema)
    bar.close()
    result.global_step = global_step
    accelerator.wait_for_everyone()
    if cfg.tensorboard:
        accelerator.end_training()
    return result


def save_checkpoint(accelerator, ckpt_root: str, step: int, scheduler, ema, keep: int) -> str:
    path = os.path.join(ckpt_root, f"step_{step:07d}")
    accelerator.save_state(path)  # model (safetensors), optimizer, RNG states; our own state below (no pickles)
    if accelerator.is_main_process:
        save_run_state(path, step, scheduler, ema)
        olds = sorted(d for d in os.listdir(ckpt_root) if d.startswith("step_"))
        for d in olds[: max(0, len(olds) - max(1, keep))]:
            shutil.rmtree(os.path.join(ckpt_root, d), ignore_errors=True)
    accelerator.wait_for_everyone()
    return path


def _weights_for_export(accelerator, cfg: TrainConfig, unet, ema) -> Dict[str, torch.Tensor]:
    model = accelerator.unwrap_model(unet)
    if ema is not None and cfg.ema.export:
        ema.store(model.parameters())
        ema.copy_to(model.parameters())
    try:
        if cfg.lora.enabled:
            return merged_lora_state_dict(model)
        return {k: v.detach().cpu().clone() for k, v in accelerator.get_state_dict(unet).items()}
    finally:
        if ema is not None and cfg.ema.export:
            ema.restore(model.parameters())


def export(accelerator, cfg: TrainConfig, recipe, unet, src, step: int, ema) -> Dict[str, str]:
    sd = _weights_for_export(accelerator, cfg, unet, ema)  # collective under ZeRO-3: every rank takes part
    paths: Dict[str, str] = {}
    if accelerator.is_main_process:
        model = accelerator.unwrap_model(unet)
        if cfg.lora.enabled:  # a plain SV3DUNet of the same config receives the merged weights
            from ..unet import SV3DUNet

            model = SV3DUNet(**{k: v for k, v in dict(model.config).items() if not k.startswith("_")})
        paths = export_trained(os.path.join(cfg.output_dir, "export", f"step_{step:07d}"), model, sd, src.vae, src.image_encoder,
                               src.source_unet_keys, cfg.pretrained, src.source_version, recipe.export_version, cfg.original_config,
                               sgm_config=recipe.export_sgm_config(src.source_version, cfg.original_config))
        accelerator.print(f"exported {paths['single_file']}")
    accelerator.wait_for_everyone()
    return paths


def validate(accelerator, cfg: TrainConfig, recipe, unet, frozen, val_dataset, step: int, ema, src_version: str):
    from ..config import spec_from_config
    from .validation import run_validation

    written = []
    if accelerator.is_main_process:
        model = accelerator.unwrap_model(unet)
        if ema is not None:
            ema.store(model.parameters())
            ema.copy_to(model.parameters())
        try:
            spec = spec_from_config(recipe.export_sgm_config(src_version, cfg.original_config), recipe.export_version)
            written = run_validation(os.path.join(cfg.output_dir, "validation", f"step_{step:07d}"), model, frozen.vae,
                                     frozen.image_encoder, spec, val_dataset, cfg.validation.num_objects, cfg.validation.num_steps,
                                     recipe.condition_last, cfg.validation.cond_aug, cfg.validation.min_scale,
                                     cfg.validation.max_scale, cfg.validation.fps, cfg.validation.seed)
        finally:
            if ema is not None:
                ema.restore(model.parameters())
            unet.train()
    accelerator.wait_for_everyone()
    return written
