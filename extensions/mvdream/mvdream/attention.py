"""Attention processors: MVDream's multiview self-attention on top of diffusers' SDPA processor."""

from __future__ import annotations

from typing import Optional

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0


class PerViewAttnProcessor(AttnProcessor2_0):
    """diffusers' SDPA attention, per image; accepts (and ignores) `num_views` so the UNet can pass it everywhere."""

    def __call__(  # type: ignore[override]
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        temb: Optional[torch.Tensor] = None,
        num_views: int = 1,
    ) -> torch.Tensor:
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


class MultiViewAttnProcessor(AttnProcessor2_0):
    """Self-attention over the tokens of all views of one object (MVDream's 3D self-attention).

    The batch must be grouped object by object: rows [k*N, (k+1)*N) are the N views of object k. The (B*N, L, C)
    tokens become (B, N*L, C), attention runs once per object with torch SDPA (memory-efficient kernels, no N*L x N*L
    score matrix in memory), and the result is split back per view.
    """

    def __call__(  # type: ignore[override]
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        temb: Optional[torch.Tensor] = None,
        num_views: int = 1,
    ) -> torch.Tensor:
        if num_views == 1:
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        if encoder_hidden_states is not None or attention_mask is not None or hidden_states.ndim != 3:
            raise ValueError(
                "MultiViewAttnProcessor is for token self-attention (attn1) only: got encoder_hidden_states/"
                "attention_mask or a non-(batch, tokens, channels) input."
            )
        batch, tokens, channels = hidden_states.shape
        if batch % num_views != 0:
            raise ValueError(f"batch size {batch} is not a multiple of num_views={num_views}")
        joined = hidden_states.reshape(batch // num_views, num_views * tokens, channels)
        out = super().__call__(attn, joined, None, None, temb)
        return out.reshape(batch, tokens, channels)
