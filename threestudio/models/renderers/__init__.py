from threestudio.models.renderers import (  # noqa: F401
    base,
    nerf_volume_renderer,
    occupancy_grid,
    volume_rendering,
)
