from threestudio.models.geometry import base, dynamic_implicit_volume, implicit_volume, tetrahedra_sdf_grid  # noqa: F401
