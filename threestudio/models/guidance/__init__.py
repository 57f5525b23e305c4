# modules are imported here so that they register
from threestudio.models.guidance import mvdream_guidance  # noqa: F401
