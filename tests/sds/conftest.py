"""Shared fixtures of the score-distillation tests (each prior's helpers are named after it)."""
import pytest


@pytest.fixture(scope="session")
def mvdream_tiny_ckpt(tmp_path_factory):
    """A tiny random MVDream checkpoint in the released file layout (`.ckpt`, original key names)."""
    from mvdream.testing import OriginalSpec, original_state_dict, write_checkpoint

    path = tmp_path_factory.mktemp("mvdream_ckpt") / "tiny-4view.ckpt"
    return write_checkpoint(original_state_dict(OriginalSpec(), seed=0), path)
