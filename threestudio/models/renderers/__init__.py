from threestudio.models.renderers import (  # noqa: F401
    base,
    nerf_volume_renderer,
    nvdiff_rasterizer,
    occupancy_grid,
    volume_rendering,
)
