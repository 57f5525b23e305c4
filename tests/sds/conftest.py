"""Shared fixtures of the score-distillation tests (each prior's helpers are named after it)."""
import pytest


@pytest.fixture(scope="session")
def mvdream_tiny_ckpt(tmp_path_factory):
    """A tiny random MVDream checkpoint in the released file layout (`.ckpt`, original key names)."""
    from mvdream.testing import OriginalSpec, original_state_dict, write_checkpoint

    path = tmp_path_factory.mktemp("mvdream_ckpt") / "tiny-4view.ckpt"
    return write_checkpoint(original_state_dict(OriginalSpec(), seed=0), path)


@pytest.fixture(scope="session")
def sv3d_write_rgba():
    """A function writing a synthetic RGBA object (a two-coloured box on a transparent background) to a path."""
    import numpy as np
    from PIL import Image

    def write(path, size=96):
        a = np.zeros((size, size, 4), np.uint8)
        a[20:70, 30:60] = [200, 60, 40, 255]
        a[40:70, 30:60, :3] = [30, 90, 220]
        Image.fromarray(a).save(path)
        return str(path)

    return write
