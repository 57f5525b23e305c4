from threestudio.data import random_camera, random_multiview_camera  # noqa: F401
from threestudio.data import multiview_images, multiview_video  # noqa: F401
from threestudio.data import single_image  # noqa: F401
