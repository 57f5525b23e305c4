"""Shared fixtures: a tiny random checkpoint in the original MVDream layout, written by the tests."""

from __future__ import annotations

import pytest
import torch

from mvdream import MVDreamPipeline
from mvdream.testing import OriginalSpec, original_state_dict, write_checkpoint


@pytest.fixture(autouse=True)
def _single_thread():
    """Tiny models run fastest on one thread; two OpenMP threads on a busy 2-core CI machine can be 30x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_spec() -> OriginalSpec:
    return OriginalSpec()


@pytest.fixture(scope="session")
def tiny_state(tiny_spec):
    return original_state_dict(tiny_spec, seed=0)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory, tiny_state):
    return write_checkpoint(tiny_state, tmp_path_factory.mktemp("mvdream") / "tiny-4view.pt")


@pytest.fixture(scope="session")
def tiny_pipe(tiny_ckpt) -> MVDreamPipeline:
    torch.manual_seed(0)
    return MVDreamPipeline.from_single_file(tiny_ckpt)
