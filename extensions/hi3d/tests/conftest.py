import numpy as np
import pytest
from PIL import Image

from sv3d.tiny import one_thread

from hi3d import Hi3DPipeline
from hi3d.testing import TINY_HEAD_CHANNELS as HEADS
from hi3d.testing import write_aux_files, write_tiny_ckpt_dir


@pytest.fixture(autouse=True)
def _single_thread():
    with one_thread():
        yield


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """ckpts/ with tiny first_stage.pt / second_stage.pt (auxiliary weights inside) and the auxiliary files."""
    root = tmp_path_factory.mktemp("hi3d_ckpts")
    with one_thread():
        paths = write_tiny_ckpt_dir(str(root), seed=3, aux_files=True)
    return paths


@pytest.fixture(scope="session")
def bare_dir(tmp_path_factory):
    """Stage files without the auxiliary embedders' weights, plus the separate auxiliary files."""
    root = tmp_path_factory.mktemp("hi3d_bare")
    with one_thread():
        paths = write_tiny_ckpt_dir(str(root), seed=4, with_aux=False)
        paths.update(write_aux_files(str(root), seed=9))
    return paths


@pytest.fixture(scope="session")
def pipes(tiny_dir):
    cache = {}

    def get(stage):
        if stage not in cache:
            with one_thread():
                cache[stage] = Hi3DPipeline.from_single_file(tiny_dir[stage], num_head_channels=HEADS)
        return cache[stage]

    return get


@pytest.fixture(scope="session")
def rgba_image(tmp_path_factory):
    arr = np.zeros((80, 96, 4), np.uint8)
    arr[20:60, 30:70] = (200, 40, 40, 255)
    path = tmp_path_factory.mktemp("hi3d_img") / "object.png"
    Image.fromarray(arr).save(path)
    return str(path)
