"""Tiny random checkpoints in the exact layouts of Hi3D's released files, for tests and benchmarks.

- `first_stage.pt` / `second_stage.pt`: DeepSpeed dicts {'module': {'module.<sgm key>': tensor}} holding the whole
  DiffusionEngine state (VideoUNet, conditioner embedders, first stage), stage 1 with the aesthetic embedder's
  CLIP (text transformer deleted, as AesEmbedder does) and MLP, stage 2 with the MiDaS model of the depth embedder.
- `open_clip_pytorch_model.bin` (OpenCLIP state dict), `ViT-L-14.pt` (a TorchScript archive like OpenAI's),
  `metric_models/sac+logos+ava1-l14-linearMSE.pth` (LAION MLP), `dpt_hybrid_384.pt` (MiDaS state dict).
"""

from __future__ import annotations

import os
from typing import Dict, Tuple

import torch

from sv3d.tiny import Shape, autoencoder_shapes, open_clip_shapes, random_state_dict, video_unet_shapes

# tiny sizes shared by every file (and by the oracle comparison)
TINY_HEAD_CHANNELS = 16  # head size of the tiny models (the released ones use 64): pass as num_head_channels
TINY = dict(model_channels=32, context_dim=32, vae_ch=32, clip_width=64, clip_layers=2, clip_patch=56,
            clip_l_width=64, clip_l_out=16, midas_width=32, midas_grid=2)


def _lin(p: str, out: int, inp: int, bias: bool = True) -> Dict[str, Shape]:
    d = {f"{p}.weight": (out, inp)}
    if bias:
        d[f"{p}.bias"] = (out,)
    return d


def _conv(p: str, out: int, inp: int, k: int, bias: bool = True) -> Dict[str, Shape]:
    d = {f"{p}.weight": (out, inp, k, k)}
    if bias:
        d[f"{p}.bias"] = (out,)
    return d


def _norm(p: str, ch: int) -> Dict[str, Shape]:
    return {f"{p}.weight": (ch,), f"{p}.bias": (ch,)}


def aesthetic_mlp_shapes(input_size: int = 768) -> Dict[str, Shape]:
    d: Dict[str, Shape] = {}
    for i, (o, n) in zip((0, 2, 4, 6, 7), ((1024, input_size), (128, 1024), (64, 128), (16, 64), (1, 16))):
        d.update(_lin(f"layers.{i}", o, n))
    return d


def midas_dpt_hybrid_shapes(width: int = 32, layers: int = 12, grid: int = 2, stem: int = 32,
                            hidden: Tuple[int, ...] = (128, 256, 512), depths: Tuple[int, ...] = (1, 1, 1),
                            features: int = 32, mlp_ratio: int = 2, classes: int = 10) -> Dict[str, Shape]:
    """Key -> shape of MiDaS' DPTDepthModel(backbone='vitb_rn50_384') (timm ResNetV2 + ViT hybrid).
    Full size: width 768, grid 24, stem 64, hidden (256, 512, 1024), depths (3, 4, 9), features 256, mlp 4."""
    b = "pretrained.model."
    bb = b + "patch_embed.backbone."
    d: Dict[str, Shape] = {b + "cls_token": (1, 1, width), b + "pos_embed": (1, grid * grid + 1, width)}
    d.update({bb + "stem.conv.weight": (stem, 3, 7, 7), **_norm(bb + "stem.norm", stem)})
    cin = stem
    for s, (out, n) in enumerate(zip(hidden, depths)):
        mid = out // 4
        for k in range(n):
            p = f"{bb}stages.{s}.blocks.{k}."
            if k == 0:
                d.update({p + "downsample.conv.weight": (out, cin, 1, 1), **_norm(p + "downsample.norm", out)})
            d.update({p + "conv1.weight": (mid, cin if k == 0 else out, 1, 1), **_norm(p + "norm1", mid)})
            d.update({p + "conv2.weight": (mid, mid, 3, 3), **_norm(p + "norm2", mid)})
            d.update({p + "conv3.weight": (out, mid, 1, 1), **_norm(p + "norm3", out)})
        cin = out
    d.update(_conv(b + "patch_embed.proj", width, hidden[-1], 1))
    for i in range(layers):
        p = f"{b}blocks.{i}."
        d.update({**_norm(p + "norm1", width), **_lin(p + "attn.qkv", 3 * width, width), **_lin(p + "attn.proj", width, width)})
        d.update({**_norm(p + "norm2", width), **_lin(p + "mlp.fc1", mlp_ratio * width, width), **_lin(p + "mlp.fc2", width, mlp_ratio * width)})
    d.update({**_norm(b + "norm", width), **_lin(b + "head", classes, width)})
    neck = (hidden[0], hidden[1], width, width)
    for j in (3, 4):
        d.update(_lin(f"pretrained.act_postprocess{j}.0.project.0", width, 2 * width))
        d.update(_conv(f"pretrained.act_postprocess{j}.3", neck[j - 1], width, 1))
    d.update(_conv("pretrained.act_postprocess4.4", neck[3], neck[3], 3))
    for i in range(1, 5):
        d.update(_conv(f"scratch.layer{i}_rn", features, neck[i - 1], 3, bias=False))
        r = f"scratch.refinenet{i}."
        d.update(_conv(r + "out_conv", features, features, 1))
        for u in (1, 2):
            for c in (1, 2):
                d.update(_conv(f"{r}resConfUnit{u}.conv{c}", features, features, 3))
    d.update({**_conv("scratch.output_conv.0", features // 2, features, 3), **_conv("scratch.output_conv.2", 32, features // 2, 3)})
    d.update(_conv("scratch.output_conv.4", 1, 32, 1))
    return d


def _clip_l_full_shapes(width: int, out: int) -> Dict[str, Shape]:
    """OpenAI CLIP (vision tower 224 / patch 56 at tiny size, plus a one-block text transformer)."""
    d = open_clip_shapes(width, TINY["clip_layers"], TINY["clip_patch"], output_dim=out, text_width=out)
    p = "transformer.resblocks.0."
    d.update({**_norm(p + "ln_1", out), p + "attn.in_proj_weight": (3 * out, out), p + "attn.in_proj_bias": (3 * out,)})
    d.update({**_lin(p + "attn.out_proj", out, out), **_norm(p + "ln_2", out), **_lin(p + "mlp.c_fc", 4 * out, out), **_lin(p + "mlp.c_proj", out, 4 * out)})
    return d


def stage_checkpoint_shapes(stage: str, with_aux: bool = True) -> Dict[str, Shape]:
    """Key -> shape of a whole DiffusionEngine state dict of Hi3D `stage` at tiny size (sgm layout); without
    `with_aux`, the frozen image/aesthetic/depth embedders' weights are left out (to be read from ckpts/ files)."""
    t = TINY
    if stage == "stage1":
        in_ch, adm, cond_i = 8, 768, 3
    elif stage == "stage2":
        in_ch, adm, cond_i = 17, 512, 3
    else:
        raise ValueError(f"unknown stage {stage!r}")
    d = video_unet_shapes(model_channels=t["model_channels"], context_dim=t["context_dim"], adm_in_channels=adm, in_channels=in_ch)
    if with_aux:
        d.update({f"conditioner.embedders.0.open_clip.model.{k}": v for k, v in open_clip_shapes(
            t["clip_width"], t["clip_layers"], t["clip_patch"], output_dim=t["context_dim"], text_width=t["context_dim"]).items()})
    cond = f"conditioner.embedders.{cond_i}.encoder."
    d.update({cond + k: v for k, v in autoencoder_shapes(t["vae_ch"]).items()})
    d.update({cond + "quant_conv.weight": (8, 8, 1, 1), cond + "quant_conv.bias": (8,)})
    d.update({cond + "post_quant_conv.weight": (4, 4, 1, 1), cond + "post_quant_conv.bias": (4,)})
    d.update({"first_stage_model." + k: v for k, v in autoencoder_shapes(t["vae_ch"]).items()})
    d.update({"first_stage_model.quant_conv.weight": (8, 8, 1, 1), "first_stage_model.quant_conv.bias": (8,)})
    d.update({"first_stage_model.post_quant_conv.weight": (4, 4, 1, 1), "first_stage_model.post_quant_conv.bias": (4,)})
    if with_aux and stage == "stage1":
        clip = open_clip_shapes(t["clip_l_width"], t["clip_layers"], t["clip_patch"], output_dim=t["clip_l_out"], text_width=t["clip_l_out"])
        d.update({f"conditioner.embedders.1.aesthetic_model.{k}": v for k, v in clip.items()})
        d.update({f"conditioner.embedders.1.aesthetic_mlp.{k}": v for k, v in aesthetic_mlp_shapes(t["clip_l_out"]).items()})
    if with_aux and stage == "stage2":
        d.update({f"conditioner.embedders.2.model.model.{k}": v for k, v in
                  midas_dpt_hybrid_shapes(t["midas_width"], grid=t["midas_grid"]).items()})
    return d


def write_stage_checkpoint(path: str, stage: str, seed: int = 0, with_aux: bool = True) -> Dict[str, torch.Tensor]:
    """A tiny `first_stage.pt` / `second_stage.pt`: {'module': {'module.' + key: tensor}} (+ DeepSpeed extras)."""
    sd = random_state_dict(stage_checkpoint_shapes(stage, with_aux), seed)
    torch.save({"module": {"module." + k: v for k, v in sd.items()}, "buffer_names": [], "param_shapes": None,
                "global_steps": 1, "dp_world_size": 1}, str(path))
    return sd


class _Holder(torch.nn.Module):
    """A module tree made from dotted names, only to be traced into a TorchScript archive."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _module_from_state_dict(sd: Dict[str, torch.Tensor]) -> torch.nn.Module:
    root = _Holder()
    for key, value in sd.items():
        *path, name = key.split(".")
        node = root
        for part in path:
            if not hasattr(node, part):
                node.add_module(part, _Holder())
            node = getattr(node, part)
        node.register_parameter(name, torch.nn.Parameter(value.clone(), requires_grad=False))
    return root


def write_clip_l_torchscript(path: str, seed: int = 0) -> Dict[str, torch.Tensor]:
    """A tiny `ViT-L-14.pt`: TorchScript archive of an OpenAI-CLIP-layout module (visual.*, transformer.*, ...)."""
    sd = random_state_dict(_clip_l_full_shapes(TINY["clip_l_width"], TINY["clip_l_out"]), seed)
    traced = torch.jit.trace(_module_from_state_dict(sd), torch.zeros(1), check_trace=False)
    torch.jit.save(traced, str(path))
    return sd


def write_aux_files(ckpt_dir: str, seed: int = 0) -> Dict[str, str]:
    """The reference's ckpts/ auxiliaries at tiny size; returns {name: path}."""
    t = TINY
    os.makedirs(os.path.join(ckpt_dir, "metric_models"), exist_ok=True)
    paths = {
        "open_clip": os.path.join(ckpt_dir, "open_clip_pytorch_model.bin"),
        "clip_l": os.path.join(ckpt_dir, "ViT-L-14.pt"),
        "aesthetic_mlp": os.path.join(ckpt_dir, "metric_models", "sac+logos+ava1-l14-linearMSE.pth"),
        "midas": os.path.join(ckpt_dir, "dpt_hybrid_384.pt"),
    }
    oc = open_clip_shapes(t["clip_width"], t["clip_layers"], t["clip_patch"], output_dim=t["context_dim"], text_width=t["context_dim"])
    torch.save(random_state_dict(oc, seed + 1), paths["open_clip"])
    write_clip_l_torchscript(paths["clip_l"], seed + 2)
    torch.save(random_state_dict(aesthetic_mlp_shapes(t["clip_l_out"]), seed + 3), paths["aesthetic_mlp"])
    torch.save(random_state_dict(midas_dpt_hybrid_shapes(t["midas_width"], grid=t["midas_grid"]), seed + 4), paths["midas"])
    return paths


def write_tiny_ckpt_dir(ckpt_dir: str, seed: int = 0, with_aux: bool = True, aux_files: bool = False) -> Dict[str, str]:
    """ckpts/ with tiny first_stage.pt and second_stage.pt (and, with `aux_files`, the auxiliary files)."""
    os.makedirs(ckpt_dir, exist_ok=True)
    paths = {"stage1": os.path.join(ckpt_dir, "first_stage.pt"), "stage2": os.path.join(ckpt_dir, "second_stage.pt")}
    write_stage_checkpoint(paths["stage1"], "stage1", seed, with_aux)
    write_stage_checkpoint(paths["stage2"], "stage2", seed + 10, with_aux)
    if aux_files:
        paths.update(write_aux_files(ckpt_dir, seed + 20))
    return paths



def full_size_pipeline(stage: str, device="cpu", dtype=torch.float32):
    """A Hi3D pipeline of the released sizes with random weights (no checkpoint): UNet 1.52B (8 or 17 input channels),
    SD KL-f8 VAE (conditioning + first stage), OpenCLIP ViT-H/14 image tower and, per stage, OpenAI CLIP ViT-L/14 +
    LAION MLP or MiDaS DPT-hybrid. For benchmarks; `device="meta"` allocates nothing."""
    from diffusers import AutoencoderKL
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection, DPTForDepthEstimation

    from sv3d.convert_unet import unet_config_from_network_params
    from sv3d.unet import SV3DUNet

    from .aesthetic import AestheticMLP, AestheticScorer
    from .depth import DepthConditioner, dpt_hybrid_config
    from .pipeline import Hi3DPipeline
    from .specs import stage_spec

    spec = stage_spec(stage)
    params = {"model_channels": 320, "channel_mult": [1, 2, 4, 4], "attention_resolutions": [4, 2, 1], "num_head_channels": 64,
              "context_dim": 1024, "in_channels": spec.extra["in_channels"], "num_res_blocks": 2, "transformer_depth": 1}
    with torch.device(device):
        cfg = unet_config_from_network_params(params, spec.vector_widths, spec.num_frames)
        unet = SV3DUNet(**cfg, addition_time_embed_kinds=spec.extra["vector_kinds"]).to(dtype)
        vae_kw = dict(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                      up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4, scaling_factor=0.18215)
        vae, first = AutoencoderKL(**vae_kw), AutoencoderKL(**vae_kw)
        vith = CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=1280, intermediate_size=5120, projection_dim=1024,
                                                              num_hidden_layers=32, num_attention_heads=16, image_size=224,
                                                              patch_size=14, hidden_act="gelu", layer_norm_eps=1e-5)).to(dtype)
        aesthetic = depth = None
        if stage == "stage1":
            vitl = CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, projection_dim=768,
                                                                  num_hidden_layers=24, num_attention_heads=16, image_size=224,
                                                                  patch_size=14, hidden_act="quick_gelu", layer_norm_eps=1e-5)).to(dtype)
            aesthetic = AestheticScorer(vitl, AestheticMLP(768))
        else:
            shapes = midas_dpt_hybrid_shapes(768, 12, 24, 64, (256, 512, 1024), (3, 4, 9), 256, 4, 1000)
            dpt = DPTForDepthEstimation(dpt_hybrid_config({k: torch.empty(s, device="meta") for k, s in shapes.items()})).to(dtype)
            depth = DepthConditioner(dpt, spec.extra["depth_shuffle"], spec.extra["depth_scale_factor"])
    # a few diffusers buffers are made with the legacy torch.Tensor constructor, which ignores the device context
    for m in (unet, vae, first, vith, aesthetic, depth):
        if m is not None:
            m.to(device)
    return Hi3DPipeline(unet, vae, vith, spec, None, first, aesthetic, depth)
