"""Diffusion²: joint SV3D_p x SVD-xt sampling of a views x frames latent matrix (image/video to 4D), on sv3d."""

from .conditions import multiview_conditions, video_conditions
from .config import Diffusion2Config
from .distributed import DistContext, init_from_env
from .inputs import Diffusion2Input, load_input
from .joint import JointSampler, LineConditions, ScaleSchedule
from .pipeline import Diffusion2Pipeline, Diffusion2Result
from .plan import PlanEstimate, estimate_plan
from .weights import SCHEDULES, mixing_weights, multiview_scale, video_view_weights

__all__ = [
    "Diffusion2Config",
    "Diffusion2Input",
    "Diffusion2Pipeline",
    "Diffusion2Result",
    "DistContext",
    "JointSampler",
    "LineConditions",
    "PlanEstimate",
    "SCHEDULES",
    "ScaleSchedule",
    "estimate_plan",
    "init_from_env",
    "load_input",
    "mixing_weights",
    "multiview_conditions",
    "multiview_scale",
    "video_conditions",
    "video_view_weights",
]
