# modules are imported here so that they register
from threestudio.models.exporters import mesh_exporter  # noqa: F401
