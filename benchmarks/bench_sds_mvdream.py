"""Benchmark: MVDream text-to-3D training steps at the reference resolutions with a full-size random MVDream.

    python benchmarks/bench_sds_mvdream.py [--phases 64x8 256x4] [--steps N] [--warmup N] [--device cpu|cuda]

One training step = occupancy-grid update + NeRF render (configs/mvdream-sd21.yaml: hash grid 16x2 features,
2^19 table, 512 samples per ray) + guidance (resize to 256², VAE encoder with gradient, multiview UNet with
CFG, x0-SDS) + backward + AdamW step. The prior has the SD 2.1-base sizes of the shipped original YAML with
random weights (no checkpoint file; fp16 on CUDA, fp32 on CPU); the text embeddings are random. Each phase
runs in its own process so that its peak memory is its own (CUDA: max allocated; CPU: peak RSS).
Prints a table of seconds per step (median over the timed steps), steps per second, the time split and peak
memory. CPU needs ~8 GB (64²x8) to ~20 GB (256²x4): run it under `flock /tmp/bigmem.lock` on shared machines.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from types import SimpleNamespace

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from threestudio.models.guidance.mvdream_guidance import MVDreamMultiviewDiffusionGuidance  # noqa: E402
from threestudio.models.prompt_processors.base import PromptProcessorOutput  # noqa: E402

# phase name -> (render size, batch size, first step of the phase in the 10k-step recipe)
PHASES = {"64x8": (64, 8, 0), "256x4": (256, 4, 5000)}


class RandomWeightGuidance(MVDreamMultiviewDiffusionGuidance):
    """The guidance with SD 2.1-base-sized MVDream models of random weights instead of a checkpoint file."""

    def load_pipeline(self) -> SimpleNamespace:
        from diffusers import AutoencoderKL
        from mvdream import MultiViewUNet2DConditionModel, make_scheduler
        from mvdream.convert import convert_unet, convert_vae
        from mvdream.ldm_config import SHIPPED_CONFIGS, load_original_config
        from mvdream.testing import FULL_SD21, original_state_dict

        # sizes: the shipped original YAML checked against the real key layout (shapes only, no memory)
        shapes = original_state_dict(FULL_SD21, device="meta")
        config = load_original_config(str(SHIPPED_CONFIGS["sd-v2.1-base-4view"]), shapes)
        unet_config, _ = convert_unet(shapes, config)
        vae_config, _ = convert_vae(shapes, config)
        unet = MultiViewUNet2DConditionModel(**unet_config).to(self.weights_dtype)
        vae = AutoencoderKL(**vae_config).to(self.weights_dtype)
        return SimpleNamespace(unet=unet, vae=vae, scheduler=make_scheduler(), vae_scale_factor=8)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_phase(phase: str, steps: int, warmup: int, device_name: str, checkpointing: bool, out_path: str) -> None:
    """Child process: build the system and the random prior, time `steps` training steps of one phase."""
    from threestudio.data.random_multiview_camera import RandomMultiviewCameraDataModule
    from threestudio.systems.mvdream_system import MVDreamSystem
    from threestudio.systems.optim import parse_optimizer
    from threestudio.utils.config import load_config

    size, batch_size, first_step = PHASES[phase]
    device = torch.device(device_name)
    torch.manual_seed(0)
    cfg = load_config(os.path.join(REPO, "configs", "mvdream-sd21.yaml"), cli_args=[
        "system.prompt_processor.prompt=benchmark", "system.guidance.pretrained_model_name_or_path=random",
        f"data.batch_size={batch_size}", f"data.width={size}", f"data.height={size}", "data.resolution_milestones=[]",
        f"system.guidance.gradient_checkpointing={str(checkpointing).lower()}"])
    system = MVDreamSystem(cfg.system).to(device)
    guidance = RandomWeightGuidance(cfg.system["guidance"])
    guidance.prior.device = device
    width = guidance.unet.config.cross_attention_dim
    prompt_utils = PromptProcessorOutput(torch.randn(1, 77, width), torch.randn(1, 77, width))
    optimizer = parse_optimizer(cfg.system["optimizer"], system)
    dataset = RandomMultiviewCameraDataModule(cfg.data)._make_train_dataset()
    system.train()
    system.renderer.do_update_step(0, 0)  # warm-up occupancy update: the grid starts from the initial blob

    times, split = [], {"render": [], "guidance": [], "backward+step": []}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(warmup + steps):
        step = first_step + i
        batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in dataset.batch_at(step).items()}
        _sync(device)
        t0 = time.perf_counter()
        system.do_update_step(0, step)
        guidance.do_update_step(0, step)
        out = system(batch)
        _sync(device)
        t1 = time.perf_counter()
        loss = guidance(out["comp_rgb"], prompt_utils, **batch)["loss_sds"]
        _sync(device)
        t2 = time.perf_counter()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        t3 = time.perf_counter()
        if i >= warmup:
            times.append(t3 - t0)
            split["render"].append(t1 - t0)
            split["guidance"].append(t2 - t1)
            split["backward+step"].append(t3 - t2)
        print(f"[{phase}] step {step}: {t3 - t0:.2f} s (render {t1 - t0:.2f}, guidance {t2 - t1:.2f}, "
              f"backward+step {t3 - t2:.2f}), {len(out['t_points'])} samples", file=sys.stderr, flush=True)
        del out, loss
    peak = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else _peak_rss_mb())
    record = {"phase": phase, "times": times, "split": {k: statistics.median(v) for k, v in split.items()},
              "peak_mb": peak, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "threads": torch.get_num_threads()}
    with open(out_path, "w") as handle:
        json.dump(record, handle)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phases", nargs="+", default=list(PHASES), choices=list(PHASES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per phase (CPU 1, CUDA 20)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (CPU 0, CUDA 3)")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="recompute VAE-encoder activations")
    parser.add_argument("--only", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    steps = args.steps if args.steps is not None else (20 if cuda else 1)
    warmup = args.warmup if args.warmup is not None else (3 if cuda else 0)
    if args.only:
        run_phase(args.only, steps, warmup, args.device, args.gradient_checkpointing, args.result)
        return 0

    records = []
    with tempfile.TemporaryDirectory() as tmp:
        for phase in args.phases:
            result = os.path.join(tmp, f"{phase}.json")
            cmd = [sys.executable, os.path.abspath(__file__), "--only", phase, "--device", args.device,
                   "--steps", str(steps), "--warmup", str(warmup), "--result", result]
            if args.gradient_checkpointing:
                cmd.append("--gradient-checkpointing")
            proc = subprocess.run(cmd, stderr=subprocess.PIPE, text=True)
            sys.stderr.write(proc.stderr[-3000:] if proc.returncode else "")
            if proc.returncode != 0:
                print(f"{phase}: failed (exit {proc.returncode})", file=sys.stderr)
                continue
            with open(result) as handle:
                records.append(json.load(handle))
    if not records:
        return 1
    rec0 = records[0]
    memory = "peak CUDA allocated" if cuda else "peak RSS"
    print(f"MVDream x0-SDS training step (configs/mvdream-sd21.yaml, SD2.1-base-size random prior, "
          f"{'fp16' if cuda else 'fp32'} prior), {rec0['device']}, torch {torch.__version__}, "
          f"{rec0['threads']} threads, {warmup} warm-up + {steps} timed steps"
          f"{', VAE gradient checkpointing' if args.gradient_checkpointing else ''}")
    print(f"{'phase':<8}{'s/step':>9}{'it/s':>8}{'render s':>10}{'guidance s':>12}{'bwd+step s':>12}{memory + ' GB':>24}")
    for rec in records:
        median = statistics.median(rec["times"])
        s = rec["split"]
        print(f"{rec['phase']:<8}{median:>9.3f}{1 / median:>8.2f}{s['render']:>10.3f}{s['guidance']:>12.3f}"
              f"{s['backward+step']:>12.3f}{rec['peak_mb'] / 1024:>24.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
