"""SV3D image-to-3D training step with the full-size SV3D prior (random weights): seconds per step, peak memory,
and the memory plan's VAE-encoder figures.

    flock /tmp/bigmem.lock python benchmarks/bench_sds_sv3d.py                # CPU: 21 frames, 64² -> 8² latents
    flock /tmp/bigmem.lock python benchmarks/bench_sds_sv3d.py --memory-only  # the memory-plan table only
    python benchmarks/bench_sds_sv3d.py --image-size 576 --render-size 128     # CUDA: 21 frames at 576² (72² latents)

Models: SV3D's UNet (1.52B parameters), its VAE (SV3D layout: no post-quant conv) and an OpenCLIP ViT-H/14 image
tower, built at full size with random weights (no checkpoint needed); geometry, renderer and guidance settings
from configs/sv3d-image-to-3d.yaml. One step = reference-view render + 21-view orbit render (only the guidance's
`grad_frames` with autograd) + SV3D SDS (CFG batch of 2 × 21 frames) + backward + Adam step.

Memory figures:
- "VAE encoder, saved for backward": bytes autograd keeps per 576² frame, counted on the `meta` device (exact,
  no compute), for each memory-plan option.
- "peak tensors": the largest total size of live tensors created during the step (weights excluded), tracked
  per operator; on CUDA also torch.cuda.max_memory_allocated (weights included). "peak RSS": the process's.
CPU needs ~11 GB of RAM (fp32 weights 8.6 GB + activations): run it under flock /tmp/bigmem.lock.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time
import warnings
import weakref
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from threestudio.models.guidance.sv3d_guidance import SV3DGuidance  # noqa: E402
from threestudio.models.guidance.sv3d_memory import saved_tensor_bytes  # noqa: E402

GB = 2 ** 30


class PeakTensors(TorchDispatchMode):
    """Tracks the total size of live tensors created by operators inside the block (weights created before it
    are not counted); `peak` is its maximum."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t._base is None and t.device.type != "meta":
                n = t.untyped_storage().nbytes()
                self.live += n
                self.peak = max(self.peak, self.live)
                weakref.finalize(t, self._free, n)
        return out

    def _free(self, n: int) -> None:
        self.live -= n


def rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # Linux: KiB


# ------------------------------------------------------------------------------------------- models
def full_size_pipeline(version: str = "sv3d_u") -> Any:
    """SV3DPipeline of the released sizes with random weights (sizes from the shipped sgm YAML)."""
    from diffusers import AutoencoderKL
    from sv3d import SV3DPipeline, SV3DUNet
    from sv3d.config import shipped_config_path, spec_from_config
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    spec = spec_from_config(shipped_config_path(version), version)
    widths = list(spec.vector_widths)
    unet = SV3DUNet(addition_time_embed_dim=widths[0], projection_class_embeddings_input_dim=sum(widths),
                    addition_time_embed_dims=widths, num_frames=spec.num_frames)
    vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                        use_post_quant_conv=False, scaling_factor=spec.scale_factor)
    clip = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=1280, intermediate_size=5120, projection_dim=1024, num_hidden_layers=32, num_attention_heads=16,
        image_size=224, patch_size=14, hidden_act="gelu", layer_norm_eps=1e-5))
    return SV3DPipeline(unet, vae, clip, spec)


def write_input_image(path: str) -> str:
    import numpy as np
    from PIL import Image

    a = np.zeros((256, 256, 4), np.uint8)
    a[60:200, 90:170] = [200, 60, 40, 255]
    Image.fromarray(a).save(path)
    return path


def build_system(pipe: Any, args: argparse.Namespace, image: str) -> tuple[Any, Any]:
    """sv3d-system from the shipped config, its guidance on `pipe`, and the data module."""
    from threestudio.data.single_image import SingleImageDataModule
    from threestudio.systems.lift3d import BaseLift3DSystem
    from threestudio.systems.sv3d_system import SV3DSystem
    from threestudio.utils.config import load_config

    class BenchSystem(SV3DSystem):
        def configure(self) -> None:
            BaseLift3DSystem.configure(self)
            self.guidance = SV3DGuidance(self.cfg.guidance, pipeline=pipe, config_path="system.guidance")
            self.reference_orbit = None

    cfg = load_config(os.path.join(REPO, "configs", "sv3d-image-to-3d.yaml"), cli_args=[
        f"data.image_path={image}", f"data.orbit_height={args.render_size}", f"data.orbit_width={args.render_size}",
        f"data.height={args.render_size}", f"data.width={args.render_size}",
        "system.guidance.pretrained_model_name_or_path=unused", f"system.guidance.image_size={args.image_size}",
        f"system.guidance.grad_frames={args.grad_frames}", f"system.guidance.vae_chunk_size={args.vae_chunk}",
    ])
    dm = SingleImageDataModule(cfg.data)
    dm.setup("fit")
    system = BenchSystem(cfg.system)
    return system.to(pipe.device), dm


# ------------------------------------------------------------------------------------------- measurements
def memory_plan_table() -> list[tuple[str, float, float]]:
    """(option, GB per 576² frame fp32, fp16) kept for backward by the full-size VAE encoder, on `meta`."""
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                            use_post_quant_conv=False)
    vae.requires_grad_(False)
    rows = []
    for name, fn in (
        ("encoder, no checkpointing", lambda x: vae.encode(x).latent_dist.mode()),
        ("largest down block alone (peak of a block recompute)", lambda x: vae.encoder.down_blocks[0](
            vae.encoder.conv_in(x))),
        ("diffusers block checkpointing (vae_gradient_checkpointing)", None),
    ):
        sizes = []
        for dtype in (torch.float32, torch.float16):
            vae.to(dtype)
            x = torch.empty(1, 3, 576, 576, device="meta", dtype=dtype, requires_grad=True)
            if fn is None:
                vae.enable_gradient_checkpointing()
                _, n = saved_tensor_bytes(lambda: vae.encode(x).latent_dist.mode())
                vae.disable_gradient_checkpointing()
            else:
                _, n = saved_tensor_bytes(lambda: fn(x))
            sizes.append(n / GB)
        rows.append((name, *sizes))
    return rows


def timed(fn: Callable[[], Any], cuda: bool) -> tuple[Any, float]:
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if cuda:
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def run_steps(args: argparse.Namespace) -> list[dict]:
    import tempfile

    cuda = torch.cuda.is_available()
    t0 = time.perf_counter()
    pipe = full_size_pipeline(args.version)
    build_s = time.perf_counter() - t0
    n_unet = sum(p.numel() for p in pipe.unet.parameters())
    image = write_input_image(os.path.join(tempfile.mkdtemp(), "object.png"))
    system, dm = build_system(pipe, args, image)
    optimizer = system.configure_optimizers()["optimizer"]
    print(f"built full-size models in {build_s:.0f} s (UNet {n_unet / 1e9:.2f}B parameters); "
          f"weights {'fp16' if system.guidance.weights_dtype == torch.float16 else 'fp32'}; RSS {rss_gb():.1f} GB")
    results = []
    for step in range(args.steps):
        batch = dm.train_dataset.batch_at(step)
        batch = {k: (v.to(pipe.device) if torch.is_tensor(v) else v) for k, v in batch.items()}
        batch["orbit"] = {k: (v.to(pipe.device) if torch.is_tensor(v) else v) for k, v in batch["orbit"].items()}
        system.do_update_step(0, step)
        torch.manual_seed(step)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        tracker = PeakTensors()

        def one_step() -> float:
            optimizer.zero_grad(set_to_none=True)
            with tracker:
                loss = system.training_step(batch, step)
                loss.backward()
            optimizer.step()
            return float(loss)

        loss, seconds = timed(one_step, cuda)
        row = {"step": step, "seconds": seconds, "loss": loss, "peak_tensors_gb": tracker.peak / GB,
               "rss_gb": rss_gb()}
        if cuda:
            row["cuda_peak_gb"] = torch.cuda.max_memory_allocated() / GB
        results.append(row)
        print(row, flush=True)

    # the UNet call alone (CFG batch, no grad): its share of the step and its activation peak
    z = torch.randn(1, args.frames, 4, args.image_size // 8, args.image_size // 8, device=pipe.device)
    ids = system.guidance.camera_ids(None, None)
    tracker = PeakTensors()
    with tracker:
        _, unet_s = timed(lambda: system.guidance.denoise(z, torch.ones(1, device=pipe.device), ids), cuda)
    results.append({"unet_cfg_seconds": unet_s, "unet_peak_tensors_gb": tracker.peak / GB})
    print(results[-1], flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cuda = torch.cuda.is_available()
    parser.add_argument("--version", default="sv3d_u", choices=["sv3d_u", "sv3d_p"])
    parser.add_argument("--image-size", type=int, default=576 if cuda else 64, help="VAE input size (latents /8)")
    parser.add_argument("--render-size", type=int, default=128 if cuda else 32, help="orbit render resolution")
    parser.add_argument("--grad-frames", type=int, default=8)
    parser.add_argument("--vae-chunk", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3 if cuda else 2)
    parser.add_argument("--frames", type=int, default=21)
    parser.add_argument("--memory-only", action="store_true")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # dtype-cast notices
    torch.manual_seed(0)

    print("VAE encoder activations kept for backward, per 576² frame (meta device, exact):")
    print(f"{'option':62s} {'fp32 GB':>8s} {'fp16 GB':>8s}")
    for name, fp32, fp16 in memory_plan_table():
        print(f"{name:62s} {fp32:8.3f} {fp16:8.3f}")
    if args.memory_only:
        return

    device = "cuda" if cuda else "cpu"
    print(f"\nsv3d training step on {device} ({torch.get_num_threads()} threads): 21 frames, render "
          f"{args.render_size}², VAE/latents {args.image_size}²/{args.image_size // 8}², grad_frames "
          f"{args.grad_frames}, vae_chunk {args.vae_chunk}")
    results = run_steps(args)
    steps = [r for r in results if "step" in r]
    unet = results[-1]
    print(f"\n{'device':8s} {'latents':>8s} {'render':>7s} {'K':>3s} {'s/step':>8s} {'UNet CFG s':>10s} "
          f"{'peak tensors GB':>15s} {'UNet peak GB':>12s} {'peak RSS GB':>11s} {'CUDA peak GB':>12s}")
    last = steps[-1]
    print(f"{device:8s} {args.image_size // 8:>7d}² {args.render_size:>6d}² {args.grad_frames:>3d} "
          f"{last['seconds']:8.2f} {unet['unet_cfg_seconds']:10.2f} {last['peak_tensors_gb']:15.2f} "
          f"{unet['unet_peak_tensors_gb']:12.2f} {last['rss_gb']:11.1f} "
          f"{last.get('cuda_peak_gb', float('nan')):12.2f}")


if __name__ == "__main__":
    main()
