from threestudio.models.geometry import base, implicit_volume, isosurface, tetrahedra_sdf_grid  # noqa: F401
