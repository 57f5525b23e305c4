"""What the two released Hi3D stages are: vector-conditioning slots, conditioner indices, sampling recipe.

Read from the reference's `configs/inference-v01.yaml` / `inference-v02.yaml` (Hi3D-Official at aeb275b):
stage 1 conditioner = [0 OpenCLIP ViT-H image | 1 aesthetic | 2 elevation | 3 cond-frame encoder | 4 cond_aug],
stage 2 conditioner = [0 OpenCLIP ViT-H image | 1 elevation | 2 depth (MiDaS DPT-hybrid) | 3 cond-frame encoder |
4 cond_aug]. Both decode with SVD-xt's image-decoder autoencoder (`first_stage_model.*` with post_quant_conv).
"""

from __future__ import annotations

from sv3d.config import ModelSpec

AESTHETIC_SLOT = "value+sinusoid@100"  # [score, 255-wide sinusoid of 100 * score]
STAGE_NAMES = ("stage1", "stage2")
_NETWORK = {"num_head_channels": 64, "context_dim": 1024}


def stage_spec(stage: str, num_head_channels: int = 64) -> ModelSpec:
    """ModelSpec of Hi3D stage 1 (image -> 16-view orbit at 512²) or stage 2 (16-view refiner at 1024²)."""
    # shared by both stages: OpenCLIP at embedder 0, condition-frame encoder at 3, SVD-xt image-decoder first stage,
    # linear per-frame guider from 1.0, Euler-EDM 25 steps, 16 frames, cond_aug 0.02
    common = dict(network=dict(_NETWORK, num_head_channels=int(num_head_channels)), clip_index=0, cond_frames_index=3,
                  first_stage="autoencoder_kl", guider="linear", min_scale=1.0, num_frames=16, num_steps=25, cond_aug=0.02)
    if stage == "stage1":
        return ModelSpec(version="hi3d_stage1", vector_keys=["aesthetic", "elevation", "cond_aug"], vector_widths=[256, 256, 256],
                         max_scale=2.5, extra={"vector_kinds": [AESTHETIC_SLOT, "sinusoid", "sinusoid"], "aesthetic_index": 1,
                                               "resolution": 512, "in_channels": 8}, **common)
    if stage == "stage2":
        return ModelSpec(version="hi3d_stage2", vector_keys=["elevation", "cond_aug"], vector_widths=[256, 256], max_scale=2.0,
                         extra={"vector_kinds": ["sinusoid", "sinusoid"], "depth_index": 2, "resolution": 1024,
                                "in_channels": 17, "depth_shuffle": 3, "depth_scale_factor": 2.6666, "anchor_power": 40.0},
                         **common)
    raise ValueError(f"unknown Hi3D stage {stage!r}; use one of {STAGE_NAMES}")


def detect_stage(sd) -> str:
    """stage1 | stage2 from the UNet's input channels and vector width."""
    w = sd.get("model.diffusion_model.input_blocks.0.0.weight")
    adm = sd.get("model.diffusion_model.label_emb.0.0.weight")
    if w is None or adm is None:
        raise ValueError("not a Hi3D stage checkpoint: no model.diffusion_model.input_blocks.0.0 / label_emb.0.0 weights")
    cin, width = int(w.shape[1]), int(adm.shape[1])
    if (cin, width) == (8, 768):
        return "stage1"
    if (cin, width) == (17, 512):
        return "stage2"
    raise ValueError(
        f"UNet with {cin} input channels and a {width}-wide vector is neither Hi3D stage 1 (8, 768) nor stage 2 "
        "(17, 512)"
    )
