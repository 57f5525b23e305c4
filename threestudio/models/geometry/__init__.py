from threestudio.models.geometry import base, implicit_volume  # noqa: F401
