"""Ctrl-C during a checkpoint write: a message and a complete (or untouched) file, never 'unexpected pos'."""
import glob
import os
import signal

import pytest
import torch

from conftest import snapshot


def _interrupting_save(n_signals):
    """torch.save that is interrupted `n_signals` times half-way through writing."""
    real_save = torch.save

    def save(obj, fp, *args, **kwargs):
        class Interrupting:
            def __init__(self, inner):
                self.inner, self.count = inner, 0

            def write(self, data):
                self.count += 1
                if self.count == 3:
                    for _ in range(n_signals):
                        os.kill(os.getpid(), signal.SIGINT)
                return self.inner.write(data)

            def flush(self):
                return self.inner.flush()

        return real_save(obj, Interrupting(fp), *args, **kwargs)

    return save


@pytest.fixture
def old_checkpoint(tmp_path):
    from threestudio.utils.callbacks import AtomicCheckpointIO

    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.zeros(4)}, "global_step": 1}, path)
    return path


def test_one_ctrl_c_during_a_write_finishes_it_then_hands_the_signal_on(old_checkpoint, monkeypatch, capsys):
    from threestudio.utils.callbacks import AtomicCheckpointIO

    received = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        monkeypatch.setattr(torch, "save", _interrupting_save(1))
        AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(1000)}, "global_step": 2}, old_checkpoint)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert "Ctrl-C while writing" in capsys.readouterr().err
    assert received == [signal.SIGINT]  # e.g. the training's "stop after this step" handler
    assert torch.load(old_checkpoint, weights_only=True)["global_step"] == 2  # complete new file
    assert not glob.glob(str(old_checkpoint.parent / ".tmp-*"))


def test_second_ctrl_c_during_a_write_aborts_it_with_a_message(old_checkpoint, monkeypatch, capsys):
    """Before: KeyboardInterrupt inside torch.save surfaced as RuntimeError 'unexpected pos'."""
    from threestudio.utils.callbacks import AtomicCheckpointIO

    before = snapshot(old_checkpoint.parent)
    monkeypatch.setattr(torch, "save", _interrupting_save(2))
    with pytest.raises(KeyboardInterrupt):
        AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(1000)}, "global_step": 2}, old_checkpoint)
    err = capsys.readouterr().err
    assert f"Checkpoint write aborted by Ctrl-C: {old_checkpoint} was not changed." in err
    assert "unexpected pos" not in err
    assert snapshot(old_checkpoint.parent) == before  # old file intact, no temporary left
