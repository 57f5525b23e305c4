import numpy as np
import pytest
from PIL import Image

from sv3d import SV3DPipeline
from sv3d.tiny import one_thread, write_tiny_checkpoint

IMAGE = 64  # tiny input side (the models are trained at 576)


@pytest.fixture(autouse=True)
def _single_thread():
    with one_thread():
        yield


@pytest.fixture(scope="session")
def tiny_ckpts(tmp_path_factory):
    """Tiny random checkpoints in released generative-models layout, written once per session."""
    root = tmp_path_factory.mktemp("sv3d_ckpts")
    paths = {}
    with one_thread():
        for version in ("sv3d_u", "sv3d_p", "svd"):
            path = root / f"tiny_{version}.safetensors"
            write_tiny_checkpoint(str(path), version, seed=1)
            paths[version] = str(path)
    return paths


@pytest.fixture(scope="session")
def tiny_pipes(tiny_ckpts):
    cache = {}

    def get(version):
        if version not in cache:
            with one_thread():
                cache[version] = SV3DPipeline.from_single_file(tiny_ckpts[version])
        return cache[version]

    return get


@pytest.fixture(scope="session")
def rgba_object(tmp_path_factory):
    """An RGBA image (100 high, 80 wide) with an opaque 40x50 (w x h) red box at x=10, y=20."""
    arr = np.zeros((100, 80, 4), np.uint8)
    arr[20:70, 10:50] = (220, 30, 30, 255)
    path = tmp_path_factory.mktemp("sv3d_img") / "object.png"
    Image.fromarray(arr).save(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_svd_xt(tmp_path_factory):
    """A tiny random SVD-xt checkpoint (the SVD-MV source), written once per session."""
    path = tmp_path_factory.mktemp("sv3d_train_src") / "tiny_svd_xt.safetensors"
    with one_thread():
        write_tiny_checkpoint(str(path), "svd_xt", seed=2)
    return str(path)


@pytest.fixture(scope="session")
def dummy_orbits(tmp_path_factory):
    """Two rendered objects x 8 views (32 px) in the SVD-MV reference layout; returns the image root."""
    from sv3d.training.dummy_data import write_svd_meta_dataset

    root = tmp_path_factory.mktemp("sv3d_dummy_orbits")
    write_svd_meta_dataset(str(root), num_objects=2, num_views=8, size=32)
    return str(root)
