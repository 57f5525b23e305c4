from threestudio.models.geometry import base, implicit_volume, tetrahedra_sdf_grid  # noqa: F401
