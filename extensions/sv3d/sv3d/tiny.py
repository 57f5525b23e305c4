"""Tiny random checkpoints in the exact generative-models layout of the released SV3D/SVD files.

For tests (here and in packages that build on sv3d): same key names and tensor ranks as sv3d_u/sv3d_p/svd
(svd_image_decoder) checkpoints, only narrower. The layout was checked key-for-key and shape-for-shape against
the state dict of generative-models' DiffusionEngine built from a tiny config.
"""

from __future__ import annotations

import contextlib
from typing import Dict, Iterator, Iterable, Optional, Tuple

import torch

Shape = Tuple[int, ...]


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run tiny models on one intra-op thread: more threads only cost synchronisation, and stall badly on a busy
    2-core machine (the tests' autouse fixtures and session-scoped checkpoint writers use this)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
_ADM = {"sv3d_u": 256, "sv3d_p": 1280, "svd": 768, "svd_xt": 768, "svd_image_decoder": 768, "svd_xt_image_decoder": 768}


def _norm(prefix: str, ch: int) -> Dict[str, Shape]:
    return {f"{prefix}.weight": (ch,), f"{prefix}.bias": (ch,)}


def _lin(prefix: str, out: int, inp: int, bias: bool = True) -> Dict[str, Shape]:
    d = {f"{prefix}.weight": (out, inp)}
    if bias:
        d[f"{prefix}.bias"] = (out,)
    return d


def _conv(prefix: str, out: int, inp: int, k: Iterable[int] = (3, 3)) -> Dict[str, Shape]:
    return {f"{prefix}.weight": (out, inp, *k), f"{prefix}.bias": (out,)}


def _video_resblock(p: str, cin: int, cout: int, emb: int) -> Dict[str, Shape]:
    d = {**_norm(f"{p}.in_layers.0", cin), **_conv(f"{p}.in_layers.2", cout, cin), **_lin(f"{p}.emb_layers.1", cout, emb)}
    d.update({**_norm(f"{p}.out_layers.0", cout), **_conv(f"{p}.out_layers.3", cout, cout)})
    if cin != cout:
        d.update(_conv(f"{p}.skip_connection", cout, cin, (1, 1)))
    t = f"{p}.time_stack"
    d.update({**_norm(f"{t}.in_layers.0", cout), **_conv(f"{t}.in_layers.2", cout, cout, (3, 1, 1))})
    d.update({**_lin(f"{t}.emb_layers.1", cout, emb), **_norm(f"{t}.out_layers.0", cout)})
    d.update(_conv(f"{t}.out_layers.3", cout, cout, (3, 1, 1)))
    d[f"{p}.time_mixer.mix_factor"] = (1,)
    return d


def _attn(p: str, ch: int, ctx: int) -> Dict[str, Shape]:
    return {
        **_lin(f"{p}.to_q", ch, ch, False),
        **_lin(f"{p}.to_k", ch, ctx, False),
        **_lin(f"{p}.to_v", ch, ctx, False),
        **_lin(f"{p}.to_out.0", ch, ch),
    }


def _ff(p: str, ch: int) -> Dict[str, Shape]:  # GEGLU, mult 4
    return {**_lin(f"{p}.net.0.proj", 8 * ch, ch), **_lin(f"{p}.net.2", ch, 4 * ch)}


def _video_transformer(p: str, ch: int, ctx: int, depth: int = 1) -> Dict[str, Shape]:
    d = {**_norm(f"{p}.norm", ch), **_lin(f"{p}.proj_in", ch, ch)}
    for i in range(depth):
        b = f"{p}.transformer_blocks.{i}"
        d.update({**_attn(f"{b}.attn1", ch, ch), **_ff(f"{b}.ff", ch), **_attn(f"{b}.attn2", ch, ctx)})
        d.update({**_norm(f"{b}.norm1", ch), **_norm(f"{b}.norm2", ch), **_norm(f"{b}.norm3", ch)})
    d.update(_lin(f"{p}.proj_out", ch, ch))
    for i in range(depth):
        t = f"{p}.time_stack.{i}"
        d.update({**_norm(f"{t}.norm_in", ch), **_ff(f"{t}.ff_in", ch), **_attn(f"{t}.attn1", ch, ch), **_ff(f"{t}.ff", ch)})
        d.update({**_norm(f"{t}.norm2", ch), **_attn(f"{t}.attn2", ch, ctx), **_norm(f"{t}.norm1", ch), **_norm(f"{t}.norm3", ch)})
    d.update({**_lin(f"{p}.time_pos_embed.0", 4 * ch, ch), **_lin(f"{p}.time_pos_embed.2", ch, 4 * ch)})
    d[f"{p}.time_mixer.mix_factor"] = (1,)
    return d


def video_unet_shapes(
    model_channels: int = 32,
    channel_mult: Tuple[int, ...] = (1, 2, 4, 4),
    num_res_blocks: int = 2,
    attention_levels: Tuple[int, ...] = (0, 1, 2),
    context_dim: int = 32,
    adm_in_channels: int = 256,
    in_channels: int = 8,
    out_channels: int = 4,
    prefix: str = "model.diffusion_model.",
) -> Dict[str, Shape]:
    """Key -> shape of a generative-models VideoUNet."""
    mc, emb = model_channels, 4 * model_channels
    d = {**_lin("time_embed.0", emb, mc), **_lin("time_embed.2", emb, emb)}
    d.update({**_lin("label_emb.0.0", emb, adm_in_channels), **_lin("label_emb.0.2", emb, emb)})
    d.update(_conv("input_blocks.0.0", mc, in_channels))
    chans, ch, idx = [mc], mc, 1
    for lvl, mult in enumerate(channel_mult):
        for _ in range(num_res_blocks):
            d.update(_video_resblock(f"input_blocks.{idx}.0", ch, mult * mc, emb))
            ch = mult * mc
            if lvl in attention_levels:
                d.update(_video_transformer(f"input_blocks.{idx}.1", ch, context_dim))
            chans.append(ch)
            idx += 1
        if lvl != len(channel_mult) - 1:
            d.update(_conv(f"input_blocks.{idx}.0.op", ch, ch))
            chans.append(ch)
            idx += 1
    d.update(_video_resblock("middle_block.0", ch, ch, emb))
    d.update(_video_transformer("middle_block.1", ch, context_dim))
    d.update(_video_resblock("middle_block.2", ch, ch, emb))
    idx = 0
    for lvl, mult in list(enumerate(channel_mult))[::-1]:
        for i in range(num_res_blocks + 1):
            skip = chans.pop()
            d.update(_video_resblock(f"output_blocks.{idx}.0", ch + skip, mult * mc, emb))
            ch = mult * mc
            sub = 1
            if lvl in attention_levels:
                d.update(_video_transformer(f"output_blocks.{idx}.1", ch, context_dim))
                sub = 2
            if lvl and i == num_res_blocks:
                d.update(_conv(f"output_blocks.{idx}.{sub}.conv", ch, ch))
            idx += 1
    d.update({**_norm("out.0", mc), **_conv("out.2", out_channels, mc)})
    return {prefix + k: v for k, v in d.items()}


def _resnet2d(p: str, cin: int, cout: int) -> Dict[str, Shape]:
    d = {**_norm(f"{p}.norm1", cin), **_conv(f"{p}.conv1", cout, cin), **_norm(f"{p}.norm2", cout), **_conv(f"{p}.conv2", cout, cout)}
    if cin != cout:
        d.update(_conv(f"{p}.nin_shortcut", cout, cin, (1, 1)))
    return d


def _attn2d(p: str, ch: int) -> Dict[str, Shape]:
    d = _norm(f"{p}.norm", ch)
    for n in ("q", "k", "v", "proj_out"):
        d.update(_conv(f"{p}.{n}", ch, ch, (1, 1)))
    return d


def _temporal(p: str, ch: int) -> Dict[str, Shape]:
    t = f"{p}.time_stack"
    return {
        f"{p}.mix_factor": (1,),
        **_norm(f"{t}.in_layers.0", ch),
        **_conv(f"{t}.in_layers.2", ch, ch, (3, 1, 1)),
        **_norm(f"{t}.out_layers.0", ch),
        **_conv(f"{t}.out_layers.3", ch, ch, (3, 1, 1)),
    }


def autoencoder_shapes(ch: int = 32, ch_mult=(1, 2, 4, 4), num_res_blocks: int = 2, z: int = 4, part: str = "both", video: bool = False) -> Dict[str, Shape]:
    """Key -> shape of an ldm Encoder (`encoder.*`) and/or Decoder / VideoDecoder (`decoder.*`)."""
    d: Dict[str, Shape] = {}
    top = ch * ch_mult[-1]
    if part in ("both", "encoder"):
        e = {**_conv("conv_in", ch, 3)}
        cin = ch
        for i, m in enumerate(ch_mult):
            for j in range(num_res_blocks):
                e.update(_resnet2d(f"down.{i}.block.{j}", cin, ch * m))
                cin = ch * m
            if i != len(ch_mult) - 1:
                e.update(_conv(f"down.{i}.downsample.conv", cin, cin))
        e.update({**_resnet2d("mid.block_1", top, top), **_attn2d("mid.attn_1", top), **_resnet2d("mid.block_2", top, top)})
        e.update({**_norm("norm_out", top), **_conv("conv_out", 2 * z, top)})
        d.update({"encoder." + k: v for k, v in e.items()})
    if part in ("both", "decoder"):
        dd = {**_conv("conv_in", top, z)}
        dd.update({**_resnet2d("mid.block_1", top, top), **_attn2d("mid.attn_1", top), **_resnet2d("mid.block_2", top, top)})
        if video:
            dd.update({**_temporal("mid.block_1", top), **_temporal("mid.block_2", top)})
        cin = top
        for i in reversed(range(len(ch_mult))):
            for j in range(num_res_blocks + 1):
                dd.update(_resnet2d(f"up.{i}.block.{j}", cin, ch * ch_mult[i]))
                cin = ch * ch_mult[i]
                if video:
                    dd.update(_temporal(f"up.{i}.block.{j}", cin))
            if i != 0:
                dd.update(_conv(f"up.{i}.upsample.conv", cin, cin))
        dd.update({**_norm("norm_out", ch), **_conv("conv_out", 3, ch)})
        if video:
            dd.update(_conv("conv_out.time_mix_conv", 3, 3, (3, 1, 1)))
        d.update({"decoder." + k: v for k, v in dd.items()})
    return d


def open_clip_shapes(width: int = 128, layers: int = 2, patch: int = 56, image_size: int = 224, output_dim: int = 32,
                     text_width: int = 32, vocab: int = 100, context_length: int = 77) -> Dict[str, Shape]:
    """Key -> shape of the OpenCLIP model kept by FrozenOpenCLIPImageEmbedder (vision tower + text remnants)."""
    g = image_size // patch
    d = {
        "positional_embedding": (context_length, text_width),
        "text_projection": (text_width, output_dim),
        "logit_scale": (),
        "visual.class_embedding": (width,),
        "visual.positional_embedding": (g * g + 1, width),
        "visual.proj": (width, output_dim),
        "visual.conv1.weight": (width, 3, patch, patch),
        **_norm("visual.ln_pre", width),
        **_norm("visual.ln_post", width),
        "token_embedding.weight": (vocab, text_width),
        **_norm("ln_final", text_width),
    }
    for i in range(layers):
        b = f"visual.transformer.resblocks.{i}"
        d.update({**_norm(f"{b}.ln_1", width), f"{b}.attn.in_proj_weight": (3 * width, width), f"{b}.attn.in_proj_bias": (3 * width,)})
        d.update({**_lin(f"{b}.attn.out_proj", width, width), **_norm(f"{b}.ln_2", width)})
        d.update({**_lin(f"{b}.mlp.c_fc", 4 * width, width), **_lin(f"{b}.mlp.c_proj", width, 4 * width)})
    return d


def sgm_checkpoint_shapes(version: str = "sv3d_u", model_channels: int = 32, context_dim: int = 32, vae_ch: int = 32,
                          clip_width: int = 128, clip_layers: int = 2, clip_patch: int = 56) -> Dict[str, Shape]:
    """Key -> shape of a whole released-layout checkpoint of `version`, at tiny sizes."""
    if version not in _ADM:
        raise ValueError(f"unknown version {version!r}")
    svd = version.startswith("svd")
    clip_i, cond_i = 0, (3 if svd else 1)
    d = video_unet_shapes(model_channels=model_channels, context_dim=context_dim, adm_in_channels=_ADM[version])
    d.update({f"conditioner.embedders.{clip_i}.open_clip.model.{k}": v for k, v in open_clip_shapes(
        clip_width, clip_layers, clip_patch, output_dim=context_dim, text_width=context_dim).items()})
    cond = f"conditioner.embedders.{cond_i}.encoder."
    d.update({cond + k: v for k, v in autoencoder_shapes(vae_ch).items()})
    d.update({cond + "quant_conv.weight": (8, 8, 1, 1), cond + "quant_conv.bias": (8,)})
    d.update({cond + "post_quant_conv.weight": (4, 4, 1, 1), cond + "post_quant_conv.bias": (4,)})
    if version.endswith("image_decoder"):
        d.update({"first_stage_model." + k: v for k, v in autoencoder_shapes(vae_ch).items()})
        d.update({"first_stage_model.quant_conv.weight": (8, 8, 1, 1), "first_stage_model.quant_conv.bias": (8,)})
        d.update({"first_stage_model.post_quant_conv.weight": (4, 4, 1, 1), "first_stage_model.post_quant_conv.bias": (4,)})
    elif svd:
        d.update({"first_stage_model." + k: v for k, v in autoencoder_shapes(vae_ch, part="encoder").items()})
        d.update({"first_stage_model." + k: v for k, v in autoencoder_shapes(vae_ch, part="decoder", video=True).items()})
    else:
        d.update({"first_stage_model." + k: v for k, v in autoencoder_shapes(vae_ch, part="decoder").items()})
    return d


def random_state_dict(shapes: Dict[str, Shape], seed: int = 0) -> Dict[str, torch.Tensor]:
    """Random tensors of well-conditioned magnitude (norm weights near 1, fan-in-scaled weights, random mix factors)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in shapes.items():
        r = torch.randn(shape, generator=g)
        if name.endswith("mix_factor") or name.endswith("logit_scale"):
            out[name] = r
        elif len(shape) == 1 and name.endswith("weight") and any(s in name for s in ("norm", "ln_", "in_layers.0", "out_layers.0", "out.0")):
            out[name] = 1.0 + 0.1 * r
        elif len(shape) >= 2:
            fan = 1
            for s in shape[1:]:
                fan *= s
            out[name] = r * (0.5 / fan**0.5)
        else:
            out[name] = 0.05 * r
    return out


def write_tiny_checkpoint(path: str, version: str = "sv3d_u", seed: int = 0, **sizes) -> Dict[str, torch.Tensor]:
    """Write a tiny random checkpoint of `version` (safetensors, or a torch pickle for .ckpt/.pt) and return it."""
    sd = random_state_dict(sgm_checkpoint_shapes(version, **sizes), seed)
    if str(path).endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file(sd, str(path))
    else:
        torch.save({"state_dict": sd}, str(path))
    return sd


def tiny_config(version: str, head_channels: Optional[int] = 16):
    """The shipped sgm YAML of `version` with the tiny model's head size (for `original_config=`)."""
    from omegaconf import OmegaConf

    from .config import shipped_config_path

    cfg = OmegaConf.load(shipped_config_path(version))
    if head_channels is not None:
        cfg.model.params.network_config.params.num_head_channels = head_channels
    return cfg
