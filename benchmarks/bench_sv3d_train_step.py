"""SVD-MV / SV3D fine-tuning step: seconds per step and peak memory, and the memory plan for 21 frames at 576².

    python benchmarks/bench_sv3d_train_step.py                       # tiny random UNet on CPU (seconds, RSS)
    python benchmarks/bench_sv3d_train_step.py --plan                # full-size memory plan (no weights allocated)
    python benchmarks/bench_sv3d_train_step.py --size full --latents 8 --frames 7   # full-size on CPU, reduced
                                                                     # resolution (needs ~30 GB RAM: AdamW states)
    accelerate launch --config_file extensions/sv3d/accelerate_config/deepspeed_zero_2_one_gpu.yaml \\
        benchmarks/bench_sv3d_train_step.py --size full --latents 72 --frames 7 21       # GPU: bf16 ZeRO-2

A step = UNet forward + backward (EDM v-prediction loss, `sv3d.training.loss`) + AdamW step, with no
checkpointing, diffusers' per-layer checkpointing and whole-block checkpointing (`SV3DUNet.enable_block_checkpointing`).
VAE/CLIP encoding is not included (the latent cache removes it). The plan (`--plan`) counts, without allocating
anything (FakeTensorMode), the parameter bytes and the activations autograd saves for one 576x576 clip.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import torch  # noqa: E402

from sv3d.config import shipped_config_path, spec_from_config  # noqa: E402
from sv3d.convert_unet import unet_config_from_network_params  # noqa: E402
from sv3d.training.loss import edm_training_loss  # noqa: E402
from sv3d.unet import SV3DUNet  # noqa: E402

GB = 2**30
MODES = ("none", "layer", "block")


def unet_config(size: str, version: str) -> dict:
    spec = spec_from_config(shipped_config_path(version), version)
    params = dict(spec.network)
    if size == "tiny":
        params.update(model_channels=32, num_head_channels=16, context_dim=32)
    return unet_config_from_network_params(params, spec.vector_widths)


def set_checkpointing(unet: SV3DUNet, mode: str) -> None:
    unet.enable_block_checkpointing(mode == "block")
    if mode == "layer":
        unet.enable_gradient_checkpointing()
    elif mode == "none":
        unet.disable_gradient_checkpointing()


def rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def step_fn(unet, optimizer, frames: int, hw: int, accelerator=None):
    dev, dtype = next(unet.parameters()).device, next(unet.parameters()).dtype
    k = len(unet.added_id_widths) if hasattr(unet, "added_id_widths") else 2
    ctx_dim = unet.config.cross_attention_dim
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, frames, 4, hw, hw, generator=g).to(dev)
    noise = torch.randn(1, frames, 4, hw, hw, generator=g).to(dev)
    concat = torch.randn(1, frames, 4, hw, hw, generator=g).to(dev)
    ctx = torch.randn(1, 1, ctx_dim, generator=g).to(dev, dtype)
    ids = torch.rand(1, frames, k, generator=g).to(dev)
    sigma = torch.tensor([1.5], device=dev)

    def step():
        import contextlib

        with accelerator.autocast() if accelerator is not None else contextlib.nullcontext():
            loss = edm_training_loss(unet, x0, sigma, noise, concat, ctx, ids, "edm")
        if accelerator is not None:
            accelerator.backward(loss)
        else:
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def saved_activation_bytes(unet, step) -> int:
    """Bytes of the distinct non-parameter tensors autograd keeps for backward during one step (checkpoint
    regions contribute only what they keep; block inputs kept alive by the skip connections are not counted)."""
    params = {p.untyped_storage().data_ptr() for p in unet.parameters()}
    seen = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(seen.values())


def time_steps(step, repeats: int, warmup: int, cuda: bool) -> float:
    times = []
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_cpu(size: str, version: str, frames_list, latents, repeats: int, optimizer: str = "adamw"):
    rows = []
    for mode in MODES:
        torch.manual_seed(0)
        unet = SV3DUNet(**unet_config(size, version)).train()
        set_checkpointing(unet, mode)
        # plain SGD keeps no state: a full-size step then fits in ~13 GB of RAM instead of ~30 GB with AdamW
        opt = (torch.optim.AdamW(unet.parameters(), lr=1e-5) if optimizer == "adamw"
               else torch.optim.SGD(unet.parameters(), lr=1e-5))
        for f in frames_list:
            for hw in latents:
                step = step_fn(unet, opt, f, hw)
                saved = saved_activation_bytes(unet, step)
                sec = time_steps(step, repeats, 1, False)
                rows.append(("cpu", "fp32", mode, f, hw, sec, f"{saved / GB:.3f} saved by autograd (RSS high-water {rss_gb():.2f})"))
        del unet, opt
    return rows


def bench_gpu(version: str, frames_list, latents, repeats: int):
    from accelerate import Accelerator

    acc = Accelerator()
    ds = acc.state.deepspeed_plugin
    if ds is not None:
        ds.deepspeed_config["train_micro_batch_size_per_gpu"] = 1
    rows = []
    for mode in ("layer", "block"):
        torch.manual_seed(0)
        unet = SV3DUNet(**unet_config("full", version)).train()
        set_checkpointing(unet, mode)
        opt = torch.optim.AdamW(unet.parameters(), lr=1e-5)
        unet, opt = acc.prepare(unet, opt)
        for f in frames_list:
            for hw in latents:
                torch.cuda.reset_peak_memory_stats()
                try:
                    sec = time_steps(step_fn(unet, opt, f, hw, acc), repeats, 2, True)
                    peak = f"{torch.cuda.max_memory_allocated() / GB:.1f}"
                except torch.cuda.OutOfMemoryError:
                    sec, peak = float("nan"), "OOM"
                    torch.cuda.empty_cache()
                rows.append(("cuda", f"{acc.mixed_precision}{' ZeRO-' + str(ds.zero_stage) if ds else ''}", mode, f, hw, sec, peak))
        del unet, opt
        acc.free_memory()
    return rows


def memory_plan(version: str, frames_list, hw: int = 72):
    """Parameter count and saved-activation bytes of the full-size UNet at bf16, counted in FakeTensorMode."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    out = {}
    try:
        with FakeTensorMode():
            unet = SV3DUNet(**unet_config("full", version)).train()
            n_params = sum(p.numel() for p in unet.parameters())
            param_storages = {p.untyped_storage()._cdata for p in unet.parameters()}
            blocks = list(unet.down_blocks) + [unet.mid_block] + list(unet.up_blocks)
            for f in frames_list:
                per_block = {}
                current = [None]
                saved = {}

                def pack(t):
                    s = t.untyped_storage()
                    if s._cdata not in param_storages and s._cdata not in saved:
                        saved[s._cdata] = (current[0], s.nbytes())
                    return t

                hooks = []
                for i, b in enumerate(blocks):
                    hooks.append(b.register_forward_pre_hook(lambda m, a, i=i: current.__setitem__(0, i)))
                    hooks.append(b.register_forward_hook(lambda m, a, o: current.__setitem__(0, None)))
                results = {}
                for mode in ("none", "layer"):
                    set_checkpointing(unet, mode)
                    saved.clear()
                    x = torch.randn(1, f, unet.config.in_channels, hw, hw)
                    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                        unet(x, torch.zeros(1), torch.zeros(1, 1, unet.config.cross_attention_dim), torch.zeros(1, f, len(unet.added_id_widths)))
                    results[mode] = sum(v for _, v in saved.values())
                    if mode == "none":
                        for blk, v in saved.values():
                            per_block[blk] = per_block.get(blk, 0) + v
                for h in hooks:
                    h.remove()
                # whole-block checkpointing keeps the skip connections and block inputs (~ the outside-of-block
                # tensors) and recomputes one block at a time: peak = outside + largest block
                outside = per_block.get(None, 0)
                inner = max(v for k, v in per_block.items() if k is not None)
                skips = 0
                c = unet.config.block_out_channels
                res = hw
                for lvl, ch in enumerate(c):  # conv_in + per level: resnet outputs (+ downsample)
                    skips += (ch * res * res * (unet.config.layers_per_block + (1 if lvl == 0 else 0) + (1 if lvl < len(c) - 1 else 0)))
                    res = (res + 1) // 2 if lvl < len(c) - 1 else res
                skips = skips * f * 2  # bf16
                out[f] = {"none": results["none"], "layer": results["layer"], "block": outside + skips + inner, "largest_block": inner}
    finally:
        torch.set_default_dtype(default)
    return n_params, out


def print_plan(version: str, frames_list) -> None:
    n, acts = memory_plan(version, frames_list)
    state_zero2 = 16 * n  # bf16 weights 2 + bf16 grads 2 + fp32 master 4 + Adam m, v 8 bytes per parameter (1 GPU)
    state_offload = 4 * n  # ZeRO-3 / ZeRO-2 with optimizer offload: bf16 weights + grads on the GPU
    print(f"\nMemory plan, {version} UNet: {n / 1e9:.3f}B parameters; bf16 mixed precision, AdamW, one 576x576 clip")
    print(f"fixed state on one GPU: ZeRO-2 {state_zero2 / GB:.1f} GB (16 B/param); optimizer offloaded to CPU "
          f"{state_offload / GB:.1f} GB (+{12 * n / GB:.1f} GB host RAM)")
    print("| frames | activations, no ckpt | diffusers per-layer ckpt | whole-block ckpt | ZeRO-2 total (block) | offload total (block) |")
    print("|---|---|---|---|---|---|")
    for f, a in acts.items():
        print(f"| {f} | {a['none'] / GB:.1f} GB | {a['layer'] / GB:.1f} GB | {a['block'] / GB:.1f} GB "
              f"(largest block {a['largest_block'] / GB:.1f}) | {(state_zero2 + a['block']) / GB:.1f} GB | "
              f"{(state_offload + a['block']) / GB:.1f} GB |")
    print("Activation bytes are what autograd saves for backward (no allocator slack, no attention workspaces,"
          " gradients of activations during backward not included): measure on a GPU before relying on them.")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=["tiny", "full"], default="tiny")
    p.add_argument("--version", default="svd_mv", choices=["svd_mv", "sv3d_u", "sv3d_p"])
    p.add_argument("--frames", type=int, nargs="+", default=[7, 21])
    p.add_argument("--latents", type=int, nargs="+", default=[8], help="latent side (576x576 frames = 72)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--optimizer", choices=["adamw", "sgd"], default="adamw",
                   help="CPU runs: sgd (no optimizer state) lets the full-size UNet step fit in 24 GB")
    p.add_argument("--plan", action="store_true", help="only print the full-size memory plan (allocates nothing)")
    args = p.parse_args()
    if args.plan:
        print_plan(args.version, args.frames)
        return
    if torch.cuda.is_available():
        rows = bench_gpu(args.version, args.frames, args.latents, args.repeats)
    else:
        rows = bench_cpu(args.size, args.version, args.frames, args.latents, args.repeats, args.optimizer)
    cfg = unet_config(args.size, args.version)
    print(f"{args.size} {args.version} UNet (channels {cfg['block_out_channels']}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads")
    print("| device | precision | checkpointing | frames | latent | s/step (median) | memory GB (GPU: peak allocated) |")
    print("|---|---|---|---|---|---|---|")
    for dev, prec, mode, f, hw, sec, peak in rows:
        print(f"| {dev} | {prec} | {mode} | {f} | {hw}x{hw} | {sec:.3f} | {peak} |")


if __name__ == "__main__":
    main()
