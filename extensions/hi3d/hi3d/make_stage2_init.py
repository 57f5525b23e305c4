"""SVD-xt (image decoder) -> initial weights of Hi3D's stage-2 refiner (the reference's
tool_make_init_svd_to_vid2vid.py), in generative-models layout:

- `model.diffusion_model.input_blocks.0.0.weight` 8 -> 17 input channels: [noisy 4 | 9 zero (depth) | condition 4];
- `model.diffusion_model.label_emb.0.0.weight` [1280 x 768] (fps | motion | cond_aug) -> [1280 x 512] =
  [zeros(1280 x 256) for the elevation | SVD's cond_aug columns 512:768];
- everything else as in SVD-xt; with --midas, the depth embedder's MiDaS weights under
  conditioner.embedders.2.model.model.* (the reference's model holds them too).

    python -m hi3d.make_stage2_init --svd svd_xt_image_decoder.safetensors --out stage2_init.safetensors [--midas dpt_hybrid_384.pt]
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, Mapping, Optional, Sequence

import torch

from sv3d.checkpoint import load_checkpoint

from .checkpoint import load_weights_only

CONV_IN = "model.diffusion_model.input_blocks.0.0.weight"
LABEL_EMB = "model.diffusion_model.label_emb.0.0.weight"
DEPTH_CHANNELS = 9


def stage2_init_state_dict(svd: Mapping[str, torch.Tensor], midas: Optional[Mapping[str, torch.Tensor]] = None,
                           depth_index: int = 2) -> Dict[str, torch.Tensor]:
    """The surgery on an sgm-layout SVD(-xt) state dict; raises when the input is not an 8-channel, 768-wide SVD."""
    for key in (CONV_IN, LABEL_EMB):
        if key not in svd:
            raise ValueError(f"not an SVD checkpoint in generative-models layout: no {key}")
    conv, label = svd[CONV_IN], svd[LABEL_EMB]
    if conv.shape[1] != 8 or label.shape[1] != 768:
        raise ValueError(
            f"expected SVD's 8 input channels and 768-wide vector, got {conv.shape[1]} and {label.shape[1]} "
            "(is this already a stage-2 model?)"
        )
    out = {k: v.clone() for k, v in svd.items()}
    zeros = conv.new_zeros(conv.shape[0], DEPTH_CHANNELS, *conv.shape[2:])
    out[CONV_IN] = torch.cat([conv[:, :4], zeros, conv[:, 4:]], dim=1)
    out[LABEL_EMB] = torch.cat([torch.zeros_like(label[:, :256]), label[:, 512:]], dim=1)
    if midas is not None:
        out.update({f"conditioner.embedders.{depth_index}.model.model.{k}": v.clone() for k, v in midas.items()})
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hi3d.make_stage2_init", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--svd", required=True, help="svd_xt_image_decoder.safetensors (generative-models layout)")
    p.add_argument("--out", required=True, help="output .safetensors (never overwritten)")
    p.add_argument("--midas", default=None, help="dpt_hybrid_384.pt to embed as the depth embedder's weights")
    args = p.parse_args(argv)
    try:
        if os.path.exists(args.out):
            raise ValueError(f"{args.out!r} already exists; choose another --out (nothing is overwritten)")
        if not args.out.endswith(".safetensors"):
            raise ValueError("--out must end with .safetensors")
        svd = load_checkpoint(args.svd)
        midas = None
        if args.midas:
            midas = load_weights_only(args.midas, "MiDaS DPT-hybrid")
            midas = {k: v for k, v in midas.items() if isinstance(v, torch.Tensor)}
        sd = stage2_init_state_dict(svd, midas)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from safetensors.torch import save_file

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, args.out)
    print(f"wrote {args.out}: {len(sd)} tensors (conv_in 8 -> 17 channels, label_emb 768 -> 512)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
