from threestudio.data import random_camera, random_multiview_camera  # noqa: F401
