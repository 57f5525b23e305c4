"""Helpers of the reliability tests: in-process launches of a tiny system, and folder snapshots that prove
nothing of the user's changed."""
import glob
import hashlib
import importlib.util
import logging
import os
import shutil
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
CUSTOM = os.path.join(HERE, "fixtures", "custom")
TOY = os.path.join(HERE, "fixtures", "toy.yaml")
if HERE not in sys.path:
    sys.path.insert(0, HERE)


def _launcher():
    spec = importlib.util.spec_from_file_location("launch_under_test", os.path.join(REPO, "launch.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Launcher:
    """`launch(*args)` calls launch.py's main() in this process; returns (exit code, stderr + log records)."""

    def __init__(self, capsys, caplog, monkeypatch):
        self.capsys, self.caplog, self.monkeypatch = capsys, caplog, monkeypatch

    def __call__(self, *args, config=TOY):
        self.monkeypatch.setenv("THREESTUDIO_CUSTOM_PATH", CUSTOM)
        self.capsys.readouterr()
        self.caplog.clear()
        code = _launcher().main(["--config", str(config), *map(str, args), "trainer.enable_progress_bar=false"])
        return code, self.capsys.readouterr().err + "\n" + self.caplog.text


@pytest.fixture
def launch(capsys, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="threestudio")
    return Launcher(capsys, caplog, monkeypatch)


def snapshot(folder) -> dict:
    """relative path -> (sha256, mode) of every file under `folder`."""
    out = {}
    for path in glob.glob(os.path.join(str(folder), "**", "*"), recursive=True) + \
            glob.glob(os.path.join(str(folder), "**", ".*"), recursive=True):
        if os.path.isfile(path):
            with open(path, "rb") as fp:
                out[os.path.relpath(path, folder)] = (hashlib.sha256(fp.read()).hexdigest(), os.stat(path).st_mode)
    return out


@pytest.fixture(scope="session")
def trained_toy(tmp_path_factory):
    """A finished 6-step toy trial (checkpoints at steps 3 and 6); tests copy it before changing it."""
    root = tmp_path_factory.mktemp("toy-trial")
    old = os.environ.get("THREESTUDIO_CUSTOM_PATH")
    os.environ["THREESTUDIO_CUSTOM_PATH"] = CUSTOM
    try:
        code = _launcher().main(["--config", TOY, "--train", f"exp_root_dir={root}", "tag=trial",
                                 "trainer.enable_progress_bar=false"])
    finally:
        if old is None:
            os.environ.pop("THREESTUDIO_CUSTOM_PATH", None)
        else:
            os.environ["THREESTUDIO_CUSTOM_PATH"] = old
    assert code == 0
    (trial,) = glob.glob(os.path.join(str(root), "toy", "trial@*"))
    return trial


@pytest.fixture
def toy_trial(trained_toy, tmp_path):
    """A private copy of the finished toy trial."""
    copy = os.path.join(str(tmp_path), "outputs", "toy", os.path.basename(trained_toy))
    shutil.copytree(trained_toy, copy)
    return copy
