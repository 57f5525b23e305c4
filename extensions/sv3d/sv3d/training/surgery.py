"""UNet surgery shared by the recipes: a new added-embedding input width, everything else loaded as is."""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from ..unet import SV3DUNet


def default_linear_init(shape: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    """torch.nn.Linear's default weight init (kaiming-uniform, a = sqrt(5), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in))),
    drawn from `generator` so that every rank and every rerun gets the same tensor."""
    bound = 1.0 / math.sqrt(shape[1])
    return (torch.rand(tuple(shape), generator=generator) * 2.0 - 1.0) * bound


def with_added_embedding(
    source: SV3DUNet, widths: Sequence[int], new_weight: Callable[[torch.Tensor], torch.Tensor]
) -> SV3DUNet:
    """A copy of `source` whose per-frame vector conditioning has the sinusoid `widths`; `add_embedding.linear_1.weight`
    (time_embed_dim x sum(widths)) is `new_weight(source weight)` and every other tensor (its bias included) is the
    source's."""
    cfg = dict(source.config)
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    cfg["projection_class_embeddings_input_dim"] = int(sum(widths))
    cfg["addition_time_embed_dims"] = tuple(int(w) for w in widths)
    cfg["addition_time_embed_dim"] = int(widths[0])
    unet = SV3DUNet(**cfg)
    sd = dict(source.state_dict())
    key = "add_embedding.linear_1.weight"
    weight = new_weight(sd[key].detach().float()).to(sd[key].dtype)
    expect = (sd[key].shape[0], int(sum(widths)))
    if tuple(weight.shape) != expect:
        raise ValueError(f"surgery produced {key} of shape {tuple(weight.shape)}, expected {expect}")
    sd[key] = weight
    unet.load_state_dict(sd, strict=True)
    return unet.to(next(source.parameters()).dtype)


def svd_cond_aug_columns(weight: torch.Tensor) -> torch.Tensor:
    """The columns of SVD's (time_embed_dim x 768) added-embedding weight that read cond_aug ([fps | motion | cond_aug])."""
    if weight.shape[1] != 768:
        raise ValueError(f"expected SVD's 768-wide added embedding, got {weight.shape[1]}")
    return weight[:, 512:768]
