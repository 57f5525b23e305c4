"""MVDream's multiview UNet as a diffusers UNet2DConditionModel."""

from __future__ import annotations

import functools
from typing import Any, Dict, Optional, Union

import torch
# DiffusionPipeline.from_pretrained finds a custom component's loader by looking its base class up in the
# component's module, so ModelMixin must be a name in this module.
from diffusers import ModelMixin, UNet2DConditionModel  # noqa: F401
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

from .attention import MultiViewAttnProcessor, PerViewAttnProcessor


class MultiViewUNet2DConditionModel(UNet2DConditionModel):
    """SD UNet whose `attn1` layers attend jointly over the views of one object, conditioned on a camera.

    Camera MLP = diffusers' projection class embedding (`class_embed_type="projection"`,
    `projection_class_embeddings_input_dim=16`), added to the time embedding. Built without it (plain SD config),
    the same class runs Stable Diffusion checkpoints; with `num_views=1` and no camera it *is* a plain SD UNet.
    """

    # Same constructor signature as UNet2DConditionModel, so ConfigMixin reads/writes the same config keys.
    @functools.wraps(UNet2DConditionModel.__init__)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.enable_multiview_attention()

    def enable_multiview_attention(self) -> None:
        """(Re)install the multiview processor on every `attn1` and the per-view SDPA processor elsewhere."""
        self.set_attn_processor(
            {
                name: MultiViewAttnProcessor() if name.endswith("attn1.processor") else PerViewAttnProcessor()
                for name in self.attn_processors
            }
        )

    @property
    def camera_dim(self) -> Optional[int]:
        """Length of the camera vector the UNet takes (None for a plain SD UNet)."""
        if self.config.class_embed_type == "projection":
            return self.config.projection_class_embeddings_input_dim
        return None

    def get_class_embed(self, sample: torch.Tensor, class_labels: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        # MVDream skips the camera embedding when no camera is given (the original does the same);
        # diffusers would raise instead.
        if class_labels is None:
            return None
        return super().get_class_embed(sample=sample, class_labels=class_labels)

    def forward(  # type: ignore[override]
        self,
        sample: torch.Tensor,
        timestep: Union[torch.Tensor, float, int],
        encoder_hidden_states: torch.Tensor,
        camera: Optional[torch.Tensor] = None,
        num_views: int = 1,
        cross_attention_kwargs: Optional[Dict[str, Any]] = None,
        return_dict: bool = True,
        **kwargs: Any,
    ) -> Union[UNet2DConditionOutput, tuple]:
        """Predict noise for a batch grouped object by object: rows k*N..k*N+N-1 are the N views of object k.

        sample (B*N, C, h, w); timestep scalar or (B*N,); encoder_hidden_states (B*N, 77, D);
        camera (B*N, camera_dim) or None; num_views N. Other keyword arguments go to UNet2DConditionModel.forward.
        """
        if num_views < 1 or sample.shape[0] % num_views != 0:
            raise ValueError(
                f"batch size {sample.shape[0]} must be a positive multiple of num_views={num_views} "
                "(group the batch object by object, N views each)"
            )
        if camera is not None:
            if self.camera_dim is None:
                raise ValueError("this UNet has no camera MLP (plain SD config); call it with camera=None")
            if camera.shape != (sample.shape[0], self.camera_dim):
                raise ValueError(
                    f"camera must have shape ({sample.shape[0]}, {self.camera_dim}) (one flattened 4x4 camera-to-world "
                    f"matrix per image), got {tuple(camera.shape)}"
                )
            camera = camera.to(device=sample.device, dtype=self.dtype)
        if "class_labels" in kwargs:
            raise TypeError("pass the camera as camera=..., not class_labels")
        attn_kwargs = dict(cross_attention_kwargs or {})
        attn_kwargs["num_views"] = num_views
        return super().forward(
            sample,
            timestep,
            encoder_hidden_states,
            class_labels=camera,
            cross_attention_kwargs=attn_kwargs,
            return_dict=return_dict,
            **kwargs,
        )
