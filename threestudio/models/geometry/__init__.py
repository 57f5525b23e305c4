from threestudio.models.geometry import base, dynamic_implicit_volume, implicit_volume  # noqa: F401
