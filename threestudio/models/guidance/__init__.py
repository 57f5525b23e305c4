# modules are imported here so that they register
from threestudio.models.guidance import mvdream_guidance  # noqa: F401
from threestudio.models.guidance import sv3d_guidance  # noqa: F401
