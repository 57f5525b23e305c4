"""MVDream multi-view diffusion on diffusers: original-checkpoint loading, multiview UNet, cameras, DDIM sampling."""

from .attention import MultiViewAttnProcessor, PerViewAttnProcessor
from .camera import c2w_to_camera, get_camera, mvdream_c2w, orbit_c2w, toolkit_to_mvdream_azimuth
from .checkpoint import MVDreamCheckpointError
from .pipeline import MVDreamPipeline, MVDreamPipelineOutput
from .sampling import ddim_sample, make_scheduler
from .unet import MultiViewUNet2DConditionModel

__all__ = [
    "MVDreamPipeline",
    "MVDreamPipelineOutput",
    "MultiViewUNet2DConditionModel",
    "MultiViewAttnProcessor",
    "PerViewAttnProcessor",
    "MVDreamCheckpointError",
    "c2w_to_camera",
    "get_camera",
    "mvdream_c2w",
    "orbit_c2w",
    "toolkit_to_mvdream_azimuth",
    "ddim_sample",
    "make_scheduler",
]
__version__ = "0.1.0"
