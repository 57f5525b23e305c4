from threestudio.models.materials import (  # noqa: F401
    base,
    diffuse_with_point_light_material,
    neural_radiance_material,
    no_material,
)
