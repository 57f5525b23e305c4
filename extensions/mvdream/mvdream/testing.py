"""Random checkpoints in the *original* MVDream key layout, for tests of this package and of code built on it.

Key names and shapes follow the released checkpoints (LatentDiffusionInterface state dict: UNet under
`model.diffusion_model.`, KL autoencoder under `first_stage_model.`, OpenCLIP text tower under
`cond_stage_model.model.` or transformers CLIP under `cond_stage_model.transformer.`, 12 schedule buffers).
Written from those facts; nothing here depends on the conversion code it is meant to test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, Iterator, Optional, Tuple, Union

import numpy as np
import torch

Shape = Tuple[int, ...]


@dataclass(frozen=True)
class OriginalSpec:
    """Sizes of an original-layout checkpoint. Defaults: a tiny model that the shipped SD 2.1 YAML describes."""

    model_channels: int = 64
    channel_mult: Tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    attention_levels: Tuple[int, ...] = (0, 1)  # levels with a spatial transformer (the real models: all but last)
    transformer_depth: int = 1
    use_linear: bool = True  # SD 2.x: linear proj_in/out; SD 1.x: 1x1 convs
    camera_dim: Optional[int] = 16  # None: plain SD, no camera MLP
    latent_channels: int = 4
    vae_ch: int = 32
    vae_ch_mult: Tuple[int, ...] = (1, 2)
    vae_num_res_blocks: int = 1
    text_layout: str = "open_clip"  # or "hf_clip" (SD 1.x: transformers CLIPTextModel under .transformer.)
    text_width: int = 64
    text_layers: int = 3
    text_proj_dim: int = 32
    vocab_size: int = 49408
    context_length: int = 77
    timesteps: int = 1000
    linear_start: float = 0.00085
    linear_end: float = 0.012


FULL_SD21 = OriginalSpec(
    model_channels=320,
    channel_mult=(1, 2, 4, 4),
    num_res_blocks=2,
    attention_levels=(0, 1, 2),
    vae_ch=128,
    vae_ch_mult=(1, 2, 4, 4),
    vae_num_res_blocks=2,
    text_width=1024,
    text_layers=24,
    text_proj_dim=1024,
)
FULL_SD15 = replace(FULL_SD21, use_linear=False, text_layout="hf_clip", text_width=768, text_layers=12, text_proj_dim=768)
TINY_SD15 = OriginalSpec(use_linear=False, text_layout="hf_clip")


def _norm(prefix: str, ch: int) -> Iterator[Tuple[str, Shape]]:
    yield f"{prefix}.weight", (ch,)
    yield f"{prefix}.bias", (ch,)


def _lin(prefix: str, out: int, inp: int, bias: bool = True) -> Iterator[Tuple[str, Shape]]:
    yield f"{prefix}.weight", (out, inp)
    if bias:
        yield f"{prefix}.bias", (out,)


def _conv(prefix: str, out: int, inp: int, k: int) -> Iterator[Tuple[str, Shape]]:
    yield f"{prefix}.weight", (out, inp, k, k)
    yield f"{prefix}.bias", (out,)


def _unet_resblock(p: str, cin: int, cout: int, emb: int) -> Iterator[Tuple[str, Shape]]:
    yield from _norm(f"{p}.in_layers.0", cin)
    yield from _conv(f"{p}.in_layers.2", cout, cin, 3)
    yield from _lin(f"{p}.emb_layers.1", cout, emb)
    yield from _norm(f"{p}.out_layers.0", cout)
    yield from _conv(f"{p}.out_layers.3", cout, cout, 3)
    if cin != cout:
        yield from _conv(f"{p}.skip_connection", cout, cin, 1)


def _spatial_transformer(p: str, ch: int, context: int, depth: int, linear: bool) -> Iterator[Tuple[str, Shape]]:
    yield from _norm(f"{p}.norm", ch)
    proj = _lin if linear else (lambda q, o, i: _conv(q, o, i, 1))
    yield from proj(f"{p}.proj_in", ch, ch)
    for d in range(depth):
        b = f"{p}.transformer_blocks.{d}"
        for name in ("attn1", "attn2"):
            kv_dim = context if name == "attn2" else ch
            yield from _lin(f"{b}.{name}.to_q", ch, ch, bias=False)
            yield from _lin(f"{b}.{name}.to_k", ch, kv_dim, bias=False)
            yield from _lin(f"{b}.{name}.to_v", ch, kv_dim, bias=False)
            yield from _lin(f"{b}.{name}.to_out.0", ch, ch)
        yield from _lin(f"{b}.ff.net.0.proj", ch * 8, ch)  # GEGLU: 2 x (4 x ch)
        yield from _lin(f"{b}.ff.net.2", ch, ch * 4)
        for n in (1, 2, 3):
            yield from _norm(f"{b}.norm{n}", ch)
    yield from proj(f"{p}.proj_out", ch, ch)


def unet_shapes(s: OriginalSpec, prefix: str = "model.diffusion_model.") -> Iterator[Tuple[str, Shape]]:
    """Keys and shapes of the original MultiViewUNetModel."""
    mc, emb, ctx = s.model_channels, 4 * s.model_channels, s.text_width
    yield from _lin(f"{prefix}time_embed.0", emb, mc)
    yield from _lin(f"{prefix}time_embed.2", emb, emb)
    if s.camera_dim is not None:
        yield from _lin(f"{prefix}camera_embed.0", emb, s.camera_dim)
        yield from _lin(f"{prefix}camera_embed.2", emb, emb)
    yield from _conv(f"{prefix}input_blocks.0.0", mc, s.latent_channels, 3)
    chans, ch, i = [mc], mc, 1
    for level, mult in enumerate(s.channel_mult):
        for _ in range(s.num_res_blocks):
            yield from _unet_resblock(f"{prefix}input_blocks.{i}.0", ch, mc * mult, emb)
            ch = mc * mult
            if level in s.attention_levels:
                yield from _spatial_transformer(f"{prefix}input_blocks.{i}.1", ch, ctx, s.transformer_depth, s.use_linear)
            chans.append(ch)
            i += 1
        if level != len(s.channel_mult) - 1:
            yield from _conv(f"{prefix}input_blocks.{i}.0.op", ch, ch, 3)
            chans.append(ch)
            i += 1
    yield from _unet_resblock(f"{prefix}middle_block.0", ch, ch, emb)
    yield from _spatial_transformer(f"{prefix}middle_block.1", ch, ctx, s.transformer_depth, s.use_linear)
    yield from _unet_resblock(f"{prefix}middle_block.2", ch, ch, emb)
    i = 0
    for level in reversed(range(len(s.channel_mult))):
        for j in range(s.num_res_blocks + 1):
            out = mc * s.channel_mult[level]
            yield from _unet_resblock(f"{prefix}output_blocks.{i}.0", ch + chans.pop(), out, emb)
            ch, n = out, 1
            if level in s.attention_levels:
                yield from _spatial_transformer(f"{prefix}output_blocks.{i}.1", ch, ctx, s.transformer_depth, s.use_linear)
                n = 2
            if level and j == s.num_res_blocks:
                yield from _conv(f"{prefix}output_blocks.{i}.{n}.conv", ch, ch, 3)
            i += 1
    yield from _norm(f"{prefix}out.0", mc)
    yield from _conv(f"{prefix}out.2", s.latent_channels, mc, 3)


def _vae_resblock(p: str, cin: int, cout: int) -> Iterator[Tuple[str, Shape]]:
    yield from _norm(f"{p}.norm1", cin)
    yield from _conv(f"{p}.conv1", cout, cin, 3)
    yield from _norm(f"{p}.norm2", cout)
    yield from _conv(f"{p}.conv2", cout, cout, 3)
    if cin != cout:
        yield from _conv(f"{p}.nin_shortcut", cout, cin, 1)


def _vae_mid(p: str, ch: int) -> Iterator[Tuple[str, Shape]]:
    yield from _vae_resblock(f"{p}.block_1", ch, ch)
    yield from _norm(f"{p}.attn_1.norm", ch)
    for name in ("q", "k", "v", "proj_out"):
        yield from _conv(f"{p}.attn_1.{name}", ch, ch, 1)
    yield from _vae_resblock(f"{p}.block_2", ch, ch)


def vae_shapes(s: OriginalSpec, prefix: str = "first_stage_model.") -> Iterator[Tuple[str, Shape]]:
    """Keys and shapes of the original KL-f8-style AutoencoderKL (no attention in down/up blocks)."""
    ch, mults, z = s.vae_ch, s.vae_ch_mult, s.latent_channels
    yield from _conv(f"{prefix}encoder.conv_in", ch, 3, 3)
    cin = ch
    for i, m in enumerate(mults):
        for j in range(s.vae_num_res_blocks):
            yield from _vae_resblock(f"{prefix}encoder.down.{i}.block.{j}", cin, ch * m)
            cin = ch * m
        if i != len(mults) - 1:
            yield from _conv(f"{prefix}encoder.down.{i}.downsample.conv", cin, cin, 3)
    yield from _vae_mid(f"{prefix}encoder.mid", cin)
    yield from _norm(f"{prefix}encoder.norm_out", cin)
    yield from _conv(f"{prefix}encoder.conv_out", 2 * z, cin, 3)
    yield from _conv(f"{prefix}decoder.conv_in", cin, z, 3)
    yield from _vae_mid(f"{prefix}decoder.mid", cin)
    for i in reversed(range(len(mults))):
        for j in range(s.vae_num_res_blocks + 1):
            yield from _vae_resblock(f"{prefix}decoder.up.{i}.block.{j}", cin, ch * mults[i])
            cin = ch * mults[i]
        if i != 0:
            yield from _conv(f"{prefix}decoder.up.{i}.upsample.conv", cin, cin, 3)
    yield from _norm(f"{prefix}decoder.norm_out", cin)
    yield from _conv(f"{prefix}decoder.conv_out", 3, cin, 3)
    yield from _conv(f"{prefix}quant_conv", 2 * z, 2 * z, 1)
    yield from _conv(f"{prefix}post_quant_conv", z, z, 1)


def text_shapes(s: OriginalSpec) -> Iterator[Tuple[str, Shape]]:
    """Keys and shapes of the text tower: OpenCLIP (visual tower deleted) or transformers CLIPTextModel (4.2x)."""
    w, inner = s.text_width, 4 * s.text_width
    if s.text_layout == "open_clip":
        p = "cond_stage_model.model."
        yield f"{p}positional_embedding", (s.context_length, w)
        yield f"{p}text_projection", (w, s.text_proj_dim)
        yield f"{p}logit_scale", ()
        yield f"{p}token_embedding.weight", (s.vocab_size, w)
        for i in range(s.text_layers):
            b = f"{p}transformer.resblocks.{i}"
            yield from _norm(f"{b}.ln_1", w)
            yield f"{b}.attn.in_proj_weight", (3 * w, w)
            yield f"{b}.attn.in_proj_bias", (3 * w,)
            yield from _lin(f"{b}.attn.out_proj", w, w)
            yield from _norm(f"{b}.ln_2", w)
            yield from _lin(f"{b}.mlp.c_fc", inner, w)
            yield from _lin(f"{b}.mlp.c_proj", w, inner)
        yield from _norm(f"{p}ln_final", w)
    elif s.text_layout == "hf_clip":
        p = "cond_stage_model.transformer.text_model."
        yield f"{p}embeddings.token_embedding.weight", (s.vocab_size, w)
        yield f"{p}embeddings.position_embedding.weight", (s.context_length, w)
        yield f"{p}embeddings.position_ids", (1, s.context_length)
        for i in range(s.text_layers):
            b = f"{p}encoder.layers.{i}"
            for name in ("k_proj", "v_proj", "q_proj", "out_proj"):
                yield from _lin(f"{b}.self_attn.{name}", w, w)
            yield from _norm(f"{b}.layer_norm1", w)
            yield from _lin(f"{b}.mlp.fc1", inner, w)
            yield from _lin(f"{b}.mlp.fc2", w, inner)
            yield from _norm(f"{b}.layer_norm2", w)
        yield from _norm(f"{p}final_layer_norm", w)
    else:
        raise ValueError(f"unknown text layout {s.text_layout!r}")


def schedule_buffers(s: OriginalSpec) -> Dict[str, torch.Tensor]:
    """The 12 LDM schedule buffers (scaled-linear betas and derived quantities), float32 as in the original."""
    betas = np.linspace(math.sqrt(s.linear_start), math.sqrt(s.linear_end), s.timesteps, dtype=np.float64) ** 2
    alphas_cumprod = np.cumprod(1.0 - betas)
    prev = np.append(1.0, alphas_cumprod[:-1])
    post_var = betas * (1.0 - prev) / (1.0 - alphas_cumprod)
    values = {
        "betas": betas,
        "alphas_cumprod": alphas_cumprod,
        "alphas_cumprod_prev": prev,
        "sqrt_alphas_cumprod": np.sqrt(alphas_cumprod),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - alphas_cumprod),
        "log_one_minus_alphas_cumprod": np.log(1.0 - alphas_cumprod),
        "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod - 1.0),
        "posterior_variance": post_var,
        "posterior_log_variance_clipped": np.log(np.maximum(post_var, 1e-20)),
        "posterior_mean_coef1": betas * np.sqrt(prev) / (1.0 - alphas_cumprod),
        "posterior_mean_coef2": (1.0 - prev) * np.sqrt(1.0 - betas) / (1.0 - alphas_cumprod),
    }
    return {k: torch.tensor(v, dtype=torch.float32) for k, v in values.items()}


def original_shapes(spec: OriginalSpec = OriginalSpec()) -> Dict[str, Shape]:
    """Every key of the original checkpoint with its shape."""
    shapes = dict(unet_shapes(spec))
    shapes.update(vae_shapes(spec))
    shapes.update(text_shapes(spec))
    shapes.update({k: tuple(v.shape) for k, v in schedule_buffers(spec).items()})
    return shapes


def random_value(key: str, shape: Shape, gen: torch.Generator) -> torch.Tensor:
    if key.endswith("position_ids"):
        return torch.arange(shape[-1]).reshape(shape)
    if key.endswith("logit_scale"):
        return torch.tensor(math.log(1 / 0.07))
    leaf = key.rsplit(".", 2)
    is_norm = any(t in key for t in ("norm", "ln_", "layer_norm", "in_layers.0", "out_layers.0", "out.0.", "norm_out"))
    if len(shape) == 1 and is_norm and leaf[-1] == "weight":
        return 1.0 + 0.1 * torch.randn(shape, generator=gen)
    if len(shape) == 1:
        return 0.05 * torch.randn(shape, generator=gen)
    if key.endswith(("positional_embedding", "position_embedding.weight", "token_embedding.weight")):
        return 0.1 * torch.randn(shape, generator=gen)
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    return torch.randn(shape, generator=gen) / math.sqrt(fan_in)


def original_state_dict(spec: OriginalSpec = OriginalSpec(), seed: int = 0, device: Union[str, torch.device] = "cpu") -> Dict[str, torch.Tensor]:
    """A random state dict in the original layout (weights ~ N(0, 1/fan_in), norms ~ 1); `device="meta"` for shapes only."""
    if str(device) == "meta":
        return {k: torch.empty(shape, device="meta") for k, shape in original_shapes(spec).items()}
    gen = torch.Generator().manual_seed(seed)
    state = {k: random_value(k, shape, gen) for k, shape in original_shapes(spec).items() if k not in _SCHEDULE_KEYS}
    state.update(schedule_buffers(spec))
    return state


_SCHEDULE_KEYS = frozenset(schedule_buffers(OriginalSpec(timesteps=2)).keys())


def write_checkpoint(state_dict: Dict[str, torch.Tensor], path: Union[str, Path]) -> Path:
    """Save like the released files: `.pt` a plain state dict, `.ckpt` Lightning-style {"state_dict": ...}, `.safetensors`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path))
    elif path.suffix == ".ckpt":
        torch.save({"state_dict": state_dict, "global_step": 0}, str(path))
    else:
        torch.save(state_dict, str(path))
    return path
