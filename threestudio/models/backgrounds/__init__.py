from threestudio.models.backgrounds import (  # noqa: F401
    base,
    neural_environment_map_background,
    solid_color_background,
)
