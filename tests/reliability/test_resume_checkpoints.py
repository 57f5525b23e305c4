"""Bad `resume=` checkpoints are refused up front with a message naming the file; nothing is touched."""
import os

import pytest
import torch

from conftest import snapshot


def _variants(trial, tmp_path):
    last = os.path.join(trial, "ckpts", "last.ckpt")
    data = open(last, "rb").read()
    files = {
        "truncated": (data[: len(data) // 2], "not a readable torch checkpoint"),
        "empty": (b"", "is empty (0 bytes)"),
        "random": (os.urandom(4096), "not a readable torch checkpoint"),
    }
    tmp_path.mkdir(parents=True, exist_ok=True)
    out = []
    for name, (content, message) in files.items():
        path = tmp_path / f"{name}.ckpt"
        path.write_bytes(content)
        out.append((str(path), message))
    plain = tmp_path / "plain.ckpt"
    torch.save(torch.load(last, weights_only=True)["state_dict"], plain)
    out.append((str(plain), "is a plain state dict, not a training checkpoint of launch.py"))
    out.append((str(tmp_path / "missing.ckpt"), "does not exist"))
    out.append((str(tmp_path), "is a folder"))
    return out


@pytest.mark.parametrize("stage", ["--train", "--test"])
def test_unusable_resume_files_are_refused_up_front(launch, toy_trial, tmp_path, stage):
    """Before: tracebacks from torch/Lightning deep in the run (EOFError, 'PytorchStreamReader failed',
    KeyError 'state_dict'), after configs/{raw,parsed}.yaml had already been rewritten."""
    before = snapshot(toy_trial)
    for path, message in _variants(toy_trial, tmp_path / stage.strip("-")):
        code, err = launch(stage, f"resume={path}", f"exp_root_dir={tmp_path / 'out'}")
        assert code == 2, (path, err)
        assert path in err and message in err, err
    assert snapshot(toy_trial) == before
    assert not (tmp_path / "out").exists()


def test_checkpoint_of_another_config_names_the_trial_config(launch, toy_trial, tmp_path):
    """Before: the trial's configs were overwritten with the wrong config, then Lightning failed with
    'Error(s) in loading state_dict' and size-mismatch lines."""
    before = snapshot(toy_trial)
    last = os.path.join(toy_trial, "ckpts", "last.ckpt")
    own = os.path.join(toy_trial, "configs", "parsed.yaml")
    for stage in ("--train", "--export"):
        code, err = launch(stage, f"resume={last}", "system.dim=4")
        assert code == 2, err
        assert f"resume checkpoint '{last}'" in err and "other shapes" in err
        assert f"Use the config of its trial: --config {own}" in err
    assert snapshot(toy_trial) == before
