"""The SVD / SV3D video UNet: diffusers' UNetSpatioTemporalConditionModel with per-frame vector conditioning."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
from diffusers.configuration_utils import register_to_config
from diffusers.models.resnet import SpatioTemporalResBlock
from diffusers.models.unets.unet_spatio_temporal_condition import (
    UNetSpatioTemporalConditionModel,
    UNetSpatioTemporalConditionOutput,
)

from .embeddings import SINUSOID, embed_added_ids, parse_slot_kind


class SV3DUNet(UNetSpatioTemporalConditionModel):
    """Video UNet whose added time ids are raw scalars **per frame**.

    diffusers' model embeds one vector of ids per video, each id with the same sinusoid width. SV3D_p conditions
    every frame on its own camera (cond_aug 256 | polar 512 | azimuth 512 wide sinusoids), so here
    `added_time_ids` may be (B, T, K) and `addition_time_embed_dims` gives one width per id
    (`addition_time_embed_kinds` one slot kind per id: 'sinusoid', or 'value+sinusoid@<scale>' as Hi3D's
    aesthetic score). The layers and
    parameter names are diffusers' own, so everything else (attention processors, gradient checkpointing,
    save/load) is inherited.
    """

    @register_to_config
    def __init__(
        self,
        sample_size: Optional[int] = None,
        in_channels: int = 8,
        out_channels: int = 4,
        down_block_types: Tuple[str, ...] = (
            "CrossAttnDownBlockSpatioTemporal",
            "CrossAttnDownBlockSpatioTemporal",
            "CrossAttnDownBlockSpatioTemporal",
            "DownBlockSpatioTemporal",
        ),
        up_block_types: Tuple[str, ...] = (
            "UpBlockSpatioTemporal",
            "CrossAttnUpBlockSpatioTemporal",
            "CrossAttnUpBlockSpatioTemporal",
            "CrossAttnUpBlockSpatioTemporal",
        ),
        block_out_channels: Tuple[int, ...] = (320, 640, 1280, 1280),
        addition_time_embed_dim: int = 256,
        projection_class_embeddings_input_dim: int = 256,
        layers_per_block: Union[int, Tuple[int]] = 2,
        cross_attention_dim: Union[int, Tuple[int]] = 1024,
        transformer_layers_per_block: Union[int, Tuple[int], Tuple[Tuple]] = 1,
        num_attention_heads: Union[int, Tuple[int, ...]] = (5, 10, 20, 20),
        num_frames: int = 21,
        addition_time_embed_dims: Optional[Sequence[int]] = None,
        addition_time_embed_kinds: Optional[Sequence[str]] = None,
    ):
        super().__init__(
            sample_size=sample_size,
            in_channels=in_channels,
            out_channels=out_channels,
            down_block_types=tuple(down_block_types),
            up_block_types=tuple(up_block_types),
            block_out_channels=tuple(block_out_channels),
            addition_time_embed_dim=addition_time_embed_dim,
            projection_class_embeddings_input_dim=projection_class_embeddings_input_dim,
            layers_per_block=layers_per_block,
            cross_attention_dim=cross_attention_dim,
            transformer_layers_per_block=transformer_layers_per_block,
            num_attention_heads=num_attention_heads,
            num_frames=num_frames,
        )
        if addition_time_embed_dims is None:
            n = projection_class_embeddings_input_dim // addition_time_embed_dim
            addition_time_embed_dims = [addition_time_embed_dim] * n
        widths = [int(w) for w in addition_time_embed_dims]
        if sum(widths) != projection_class_embeddings_input_dim:
            raise ValueError(
                f"addition_time_embed_dims {widths} sum to {sum(widths)}, but the added-embedding MLP takes "
                f"{projection_class_embeddings_input_dim} inputs"
            )
        self.added_id_widths = widths
        kinds = [SINUSOID] * len(widths) if addition_time_embed_kinds is None else [str(k) for k in addition_time_embed_kinds]
        if len(kinds) != len(widths):
            raise ValueError(f"addition_time_embed_kinds {kinds} must give one kind per added id ({len(widths)})")
        for kind in kinds:
            parse_slot_kind(kind)
        self.added_id_kinds = kinds
        # Coarse activation checkpointing for training (see `enable_block_checkpointing`); not part of the config.
        self.block_checkpointing = False
        # generative-models normalises every VideoResBlock with GroupNorm(32, eps=1e-5); diffusers builds the
        # resnets of CrossAttnDownBlockSpatioTemporal with eps=1e-6. Align them (no parameters involved).
        for module in self.modules():
            if isinstance(module, SpatioTemporalResBlock):
                for sub in module.modules():
                    if isinstance(sub, torch.nn.GroupNorm):
                        sub.eps = 1e-5

    def enable_block_checkpointing(self, enabled: bool = True) -> None:
        """Checkpoint whole down/mid/up blocks: only block inputs are kept for the backward pass.

        diffusers' `enable_gradient_checkpointing` recomputes the spatial resnets and transformer blocks one by one
        but keeps the temporal layers' activations, which dominate at 21 frames (31 GB of saved activations for a
        576x576, 21-frame clip in bf16, against 3.3 GB with whole blocks; `benchmarks/bench_sv3d_train_step.py`).
        The two are exclusive: turning this on turns the per-layer checkpointing off."""
        self.block_checkpointing = bool(enabled)
        if enabled:
            self.disable_gradient_checkpointing()

    def _block(self, block, **kwargs):
        if self.block_checkpointing and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            return checkpoint(lambda: block(**kwargs), use_reentrant=False)
        return block(**kwargs)

    def embed_added_time_ids(self, added_time_ids: torch.Tensor, batch_size: int, num_frames: int) -> torch.Tensor:
        """(B, K) or (B, T, K) raw ids -> (B, T, time_embed_dim) added embedding, one per frame."""
        ids = added_time_ids
        if ids.dim() == 1:
            ids = ids[None]
        if ids.dim() == 2:
            ids = ids[:, None, :].expand(ids.shape[0], num_frames, ids.shape[-1])
        if ids.dim() != 3 or ids.shape[0] != batch_size or ids.shape[1] != num_frames:
            raise ValueError(
                f"added_time_ids must be (B, K) or (B, T, K) with B={batch_size}, T={num_frames}; "
                f"got {tuple(added_time_ids.shape)}"
            )
        sinusoids = embed_added_ids(ids.float(), self.added_id_widths, self.added_id_kinds)
        return self.add_embedding(sinusoids.to(self.add_embedding.linear_1.weight.dtype))

    def forward(
        self,
        sample: torch.Tensor,
        timestep: Union[torch.Tensor, float, int],
        encoder_hidden_states: torch.Tensor,
        added_time_ids: torch.Tensor,
        return_dict: bool = True,
    ) -> Union[UNetSpatioTemporalConditionOutput, tuple]:
        """sample (B, T, C, h, w); timestep scalar, (B,) or (B, T) (the EDM c_noise = ln(sigma)/4);
        encoder_hidden_states (B, 1, D) image embedding shared by all frames; added_time_ids (B, T, K) or (B, K)."""
        batch_size, num_frames = sample.shape[:2]
        timesteps = torch.as_tensor(timestep, device=sample.device)
        if timesteps.dim() == 0:
            timesteps = timesteps[None]
        if timesteps.dim() == 1:
            timesteps = timesteps[:, None]
        timesteps = timesteps.expand(batch_size, num_frames).reshape(-1)

        t_emb = self.time_proj(timesteps).to(dtype=sample.dtype)
        emb = self.time_embedding(t_emb)  # (B*T, C)
        emb = emb + self.embed_added_time_ids(added_time_ids, batch_size, num_frames).reshape(emb.shape)

        hidden = sample.flatten(0, 1)
        context = encoder_hidden_states.repeat_interleave(num_frames, dim=0)
        image_only_indicator = torch.zeros(batch_size, num_frames, dtype=hidden.dtype, device=hidden.device)
        # Latent sizes that are not a multiple of 2**num_upsamplers need the skip's size forwarded on upsampling.
        factor = 2**self.num_upsamplers
        forward_upsample_size = any(s % factor != 0 for s in hidden.shape[-2:])

        hidden = self.conv_in(hidden)
        skips = (hidden,)
        for block in self.down_blocks:
            kwargs = dict(hidden_states=hidden, temb=emb, image_only_indicator=image_only_indicator)
            if getattr(block, "has_cross_attention", False):
                kwargs["encoder_hidden_states"] = context
            hidden, res = self._block(block, **kwargs)
            skips += res

        hidden = self._block(
            self.mid_block, hidden_states=hidden, temb=emb, encoder_hidden_states=context, image_only_indicator=image_only_indicator
        )

        for i, block in enumerate(self.up_blocks):
            res = skips[-len(block.resnets) :]
            skips = skips[: -len(block.resnets)]
            upsample_size = skips[-1].shape[2:] if (forward_upsample_size and i < len(self.up_blocks) - 1) else None
            kwargs = dict(
                hidden_states=hidden,
                temb=emb,
                res_hidden_states_tuple=res,
                upsample_size=upsample_size,
                image_only_indicator=image_only_indicator,
            )
            if getattr(block, "has_cross_attention", False):
                kwargs["encoder_hidden_states"] = context
            hidden = self._block(block, **kwargs)

        hidden = self.conv_out(self.conv_act(self.conv_norm_out(hidden)))
        out = hidden.reshape(batch_size, num_frames, *hidden.shape[1:])
        if not return_dict:
            return (out,)
        return UNetSpatioTemporalConditionOutput(sample=out)
