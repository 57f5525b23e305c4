# modules are imported here so that they register
from threestudio.systems import mvdream_system  # noqa: F401
