"""Hi3D (image -> 16-view orbit -> 1024² refinement -> mesh) on diffusers, built on the `sv3d` package."""

from .aesthetic import AestheticMLP, AestheticScorer, load_clip_l
from .anchoring import anchor_weights, anchored_pre_step
from .checkpoint import load_stage_checkpoint
from .depth import DepthConditioner, convert_midas_dpt_hybrid, dpt_hybrid_config, load_midas_dpt_hybrid
from .pipeline import AuxFiles, Hi3DPipeline
from .specs import detect_stage, stage_spec
from .stage1 import OrbitOutput, sample_orbit, stage1_vector_ids
from .stage2 import refine_orbit, stage2_condition, stage2_vector_ids

__all__ = [
    "Hi3DPipeline",
    "AuxFiles",
    "OrbitOutput",
    "sample_orbit",
    "refine_orbit",
    "stage1_vector_ids",
    "stage2_vector_ids",
    "stage2_condition",
    "anchor_weights",
    "anchored_pre_step",
    "AestheticScorer",
    "AestheticMLP",
    "load_clip_l",
    "DepthConditioner",
    "convert_midas_dpt_hybrid",
    "dpt_hybrid_config",
    "load_midas_dpt_hybrid",
    "load_stage_checkpoint",
    "detect_stage",
    "stage_spec",
]
