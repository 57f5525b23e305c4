# modules are imported here so that they register
from threestudio.models.prompt_processors import base  # noqa: F401
from threestudio.models.prompt_processors import mvdream_prompt_processor  # noqa: F401
