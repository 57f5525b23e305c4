# modules are imported here so that they register
from threestudio.systems import dynamic_reconstruction, multiview_reconstruction  # noqa: F401
from threestudio.systems import mvdream_system  # noqa: F401
from threestudio.systems import sv3d_system  # noqa: F401
