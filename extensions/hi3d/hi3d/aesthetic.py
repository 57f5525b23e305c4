"""Hi3D's aesthetic slot: OpenAI CLIP ViT-L/14 image features -> LAION aesthetic MLP -> score.

The reference (vtdm.encoders.AesEmbedder) scores the middle frame of the clip (at inference: the input image):
bilinear resize to 224 x 384 (no antialiasing), keep columns 80:304, CLIP mean/std, `encode_image`,
L2-normalise, MLP 768 -> 1024 -> 128 -> 64 -> 16 -> 1 (`sac+logos+ava1-l14-linearMSE.pth`). The vector slot is
[score, 255-wide sinusoid of 100 * score] (`sv3d.embeddings.embed_slot(..., "value+sinusoid@100")`).
"""

from __future__ import annotations

import os
from typing import Mapping, Optional

import torch
import torch.nn.functional as F
from transformers import CLIPVisionModelWithProjection

from sv3d.convert_clip import clip_vision_config_from_state_dict, convert_open_clip_visual
from sv3d.convert_vae import strip_prefix
from sv3d.preprocess import CLIP_MEAN, CLIP_STD

from .checkpoint import is_torchscript_archive, load_weights_only
from .torchscript_weights import read_torchscript_state_dict

MLP_FILE = "sac+logos+ava1-l14-linearMSE.pth"
CLIP_L_FILE = "ViT-L-14.pt"


class AestheticMLP(torch.nn.Module):
    """The LAION improved-aesthetic-predictor head (key names `layers.{0,2,4,6,7}` as the released .pth).

    Hand-written: a five-layer MLP with no library equivalent; the dropouts are inactive at inference."""

    def __init__(self, input_size: int = 768):
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(input_size, 1024),
            torch.nn.Dropout(0.2),
            torch.nn.Linear(1024, 128),
            torch.nn.Dropout(0.2),
            torch.nn.Linear(128, 64),
            torch.nn.Dropout(0.1),
            torch.nn.Linear(64, 16),
            torch.nn.Linear(16, 1),
        )

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, torch.Tensor], what: str = "aesthetic MLP") -> "AestheticMLP":
        if "layers.0.weight" not in sd:
            raise ValueError(f"{what}: no 'layers.0.weight' (expected the LAION MLP layout layers.{{0,2,4,6,7}}.*)")
        mlp = cls(int(sd["layers.0.weight"].shape[1]))
        missing, unexpected = mlp.load_state_dict(dict(sd), strict=False)
        if missing or unexpected:
            raise ValueError(f"{what}: missing {missing}, unexpected {unexpected}")
        return mlp.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def clip_l_from_visual_state_dict(visual: Mapping[str, torch.Tensor]) -> CLIPVisionModelWithProjection:
    """OpenAI CLIP `visual.*` weights (prefix removed) -> transformers CLIPVisionModelWithProjection (QuickGELU)."""
    model = CLIPVisionModelWithProjection(clip_vision_config_from_state_dict(visual, hidden_act="quick_gelu"))
    converted = convert_open_clip_visual(visual)
    missing, unexpected = model.load_state_dict(converted, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(f"OpenAI CLIP vision tower: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.eval()


def load_clip_l(path: str) -> CLIPVisionModelWithProjection:
    """OpenAI CLIP ViT-L/14 vision tower from `ViT-L-14.pt` (TorchScript; its tensors are read without running its
    code), a state dict file with `visual.*` keys, or a transformers folder (`openai/clip-vit-large-patch14`)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return CLIPVisionModelWithProjection.from_pretrained(path, local_files_only=True).eval()
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"OpenAI CLIP ViT-L/14: {path!r} does not exist; pass ckpts/ViT-L-14.pt or a transformers CLIP folder"
        )
    if is_torchscript_archive(path):
        sd = read_torchscript_state_dict(path)  # the released ViT-L-14.pt: tensors read, code never run
    else:
        sd = load_weights_only(path, "OpenAI CLIP ViT-L/14")
    if isinstance(sd, dict) and "state_dict" in sd:
        sd = sd["state_dict"]
    visual = strip_prefix(sd, "visual.")
    if not visual:
        raise ValueError(f"OpenAI CLIP ViT-L/14: {path!r} holds no 'visual.*' tensors")
    return clip_l_from_visual_state_dict(visual)


class AestheticScorer(torch.nn.Module):
    """Image -> predicted LAION aesthetic score, exactly as Hi3D's AesEmbedder computes it."""

    def __init__(self, clip: CLIPVisionModelWithProjection, mlp: AestheticMLP):
        super().__init__()
        self.clip, self.mlp = clip.eval(), mlp.eval()

    @classmethod
    def from_files(
        cls,
        stage_sd: Optional[Mapping[str, torch.Tensor]] = None,
        clip_path: Optional[str] = None,
        mlp_path: Optional[str] = None,
        index: int = 1,
    ) -> "AestheticScorer":
        """From the stage-1 checkpoint's `conditioner.embedders.<index>.aesthetic_{model,mlp}.*` where present,
        else from `ViT-L-14.pt` (or a transformers folder) and `sac+logos+ava1-l14-linearMSE.pth`."""
        base = f"conditioner.embedders.{index}."
        visual = strip_prefix(stage_sd or {}, base + "aesthetic_model.visual.")
        mlp_sd = strip_prefix(stage_sd or {}, base + "aesthetic_mlp.")
        if visual:
            clip = clip_l_from_visual_state_dict(visual)
        elif clip_path is not None:
            clip = load_clip_l(clip_path)
        else:
            raise FileNotFoundError(
                f"the aesthetic embedder needs OpenAI CLIP ViT-L/14: the stage file has no {base}aesthetic_model.visual.* "
                f"and no {CLIP_L_FILE} (or transformers folder) was given"
            )
        if mlp_sd:
            mlp = AestheticMLP.from_state_dict(mlp_sd, "stage-1 aesthetic MLP")
        elif mlp_path is not None:
            mlp = AestheticMLP.from_state_dict(load_weights_only(mlp_path, "LAION aesthetic MLP"), mlp_path)
        else:
            raise FileNotFoundError(
                f"the aesthetic embedder needs the LAION MLP: the stage file has no {base}aesthetic_mlp.* and no "
                f"{MLP_FILE} was given"
            )
        return cls(clip, mlp)

    @staticmethod
    def preprocess(image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, 3, 224, 224) CLIP input, the reference's resize-and-crop (which stretches
        a square image to 224 x 384 and keeps the middle 224 columns)."""
        y = F.interpolate(image.float(), size=(224, 384), mode="bilinear", align_corners=False)
        y = (y[:, :, :, 80:304] + 1.0) * 0.5
        mean = torch.tensor(CLIP_MEAN, dtype=y.dtype, device=y.device).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, dtype=y.dtype, device=y.device).view(1, 3, 1, 1)
        return (y - mean) / std

    @torch.no_grad()
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B,) score."""
        pixels = self.preprocess(image).to(self.clip.dtype)
        feats = self.clip(pixel_values=pixels).image_embeds.float()
        norm = feats.norm(dim=-1, keepdim=True)
        feats = feats / torch.where(norm == 0, torch.ones_like(norm), norm)
        return self.mlp.to(feats.dtype)(feats)[:, 0]
