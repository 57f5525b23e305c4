from threestudio.models import (  # noqa: F401
    backgrounds,
    exporters,
    geometry,
    guidance,
    materials,
    prompt_processors,
    renderers,
)
