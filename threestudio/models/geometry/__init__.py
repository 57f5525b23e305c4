from threestudio.models.geometry import base, implicit_volume, isosurface  # noqa: F401
