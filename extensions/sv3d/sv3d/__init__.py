"""SV3D and SVD (Stability AI's generative-models) on diffusers: original-checkpoint loading and sampling."""

from .cameras import orbit_azimuths_deg, orbit_c2w, sv3d_p_camera_ids, write_transforms_json
from .config import VERSIONS, ModelSpec, detect_version, spec_from_config
from .embeddings import embed_added_ids, timestep_embedding
from .pipeline import SV3DOutput, SV3DPipeline
from .preprocess import clip_preprocess, image_to_tensor, preprocess_orbit_image, preprocess_video_image
from .sampling import (
    apply_guidance,
    edm_denoise,
    edm_sigmas,
    edm_v_scalings,
    euler_sample,
    linear_guidance_scales,
    triangle_guidance_scales,
)
from .unet import SV3DUNet

__all__ = [
    "SV3DPipeline",
    "SV3DOutput",
    "SV3DUNet",
    "ModelSpec",
    "VERSIONS",
    "detect_version",
    "spec_from_config",
    "timestep_embedding",
    "embed_added_ids",
    "edm_v_scalings",
    "edm_denoise",
    "edm_sigmas",
    "euler_sample",
    "linear_guidance_scales",
    "triangle_guidance_scales",
    "apply_guidance",
    "orbit_azimuths_deg",
    "orbit_c2w",
    "sv3d_p_camera_ids",
    "write_transforms_json",
    "preprocess_orbit_image",
    "preprocess_video_image",
    "image_to_tensor",
    "clip_preprocess",
]
