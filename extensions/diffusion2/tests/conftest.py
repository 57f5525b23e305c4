import numpy as np
import pytest
import torch
from PIL import Image
from sv3d.tiny import one_thread, write_tiny_checkpoint

from diffusion2 import Diffusion2Config, Diffusion2Pipeline

SIZE = 64  # tiny frames: 8x8 latents
VIEWS, FRAMES = 5, 4  # a 5-view x 4-frame matrix


@pytest.fixture(autouse=True)
def _single_thread():
    with one_thread():
        yield


@pytest.fixture(scope="session")
def tiny_ckpts(tmp_path_factory):
    """Tiny random SV3D_p and SVD-xt checkpoints in the released generative-models layout."""
    root = tmp_path_factory.mktemp("d2_ckpts")
    paths = {"sv3d": str(root / "tiny_sv3d_p.safetensors"), "svd": str(root / "tiny_svd_xt.safetensors")}
    write_tiny_checkpoint(paths["sv3d"], "sv3d_p", seed=1)
    write_tiny_checkpoint(paths["svd"], "svd", seed=2)
    return paths


@pytest.fixture(scope="session")
def tiny_pipe(tiny_ckpts):
    return Diffusion2Pipeline.from_single_files(tiny_ckpts["sv3d"], tiny_ckpts["svd"], device="cpu")


@pytest.fixture
def small_cfg():
    return Diffusion2Config(num_views=VIEWS, num_frames=FRAMES, num_steps=3, vrs_steps=2, image_size=SIZE, chunk=2, decoding_t=4)


@pytest.fixture(scope="session")
def references():
    """Synthetic references (orbit V, video F) in [-1, 1]: the joint step does not care where they come from."""
    g = torch.Generator().manual_seed(0)
    orbit = torch.rand(VIEWS, 3, SIZE, SIZE, generator=g) * 2 - 1
    video = torch.rand(FRAMES, 3, SIZE, SIZE, generator=g) * 2 - 1
    return orbit, video


def _object(w=80, h=100, box=(10, 20, 50, 70), color=(220, 30, 30)):
    arr = np.zeros((h, w, 4), np.uint8)
    x0, y0, x1, y1 = box
    arr[y0:y1, x0:x1] = (*color, 255)
    return Image.fromarray(arr)


@pytest.fixture(scope="session")
def rgba_image(tmp_path_factory):
    path = tmp_path_factory.mktemp("d2_img") / "object.png"
    _object().save(path)
    return str(path)


@pytest.fixture(scope="session")
def video_folder(tmp_path_factory):
    """Three square RGBA frames 0.png, 1.png, 2.png of a box that moves right."""
    root = tmp_path_factory.mktemp("d2_video")
    for t in range(3):
        _object(96, 96, (10 + 8 * t, 20, 50 + 8 * t, 70), (200, 40 + 60 * t, 30)).save(root / f"{t}.png")
    return str(root)
