"""Hi3D training pieces: the stage-2 degradations (here) and the recipes for the shared `sv3d.training` loop."""

from .degradations import DegradationOptions, anisotropic_kernel, degrade_clip, filter2d, random_kernel, sinc_kernel

__all__ = ["DegradationOptions", "degrade_clip", "random_kernel", "anisotropic_kernel", "sinc_kernel", "filter2d"]
