"""No loader of the project runs code from a file; partial loads say what they matched."""
import ast
import os

import pytest
import torch

from conftest import REPO, snapshot


class SideEffect:
    """Unpickling this creates a folder: proof that code from the file ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.fixture
def evil(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"field.weight": torch.zeros(3, 3), "field.bias": SideEffect(marker)},
                "global_step": 1, "epoch": 0}, path)
    return str(path), marker


def test_no_weights_only_false_and_every_torch_load_is_weights_only():
    """`system.weights=` and extract_color_mesh.py unpickled whole files (weights-only off): a pickled
    os.system ran. Now no file of the project turns weights-only off, and every torch.load turns it on."""
    forbidden = "weights_only=" + "False"
    offenders = []
    for folder, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("outputs", "__pycache__")]
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            source = open(path, encoding="utf-8").read()
            if forbidden in source:
                offenders.append(f"{path}: {forbidden}")
            for node in ast.walk(ast.parse(source)):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
                        and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"):
                    kw = {k.arg: k.value for k in node.keywords}
                    if not (isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True):
                        offenders.append(f"{path}:{node.lineno}: torch.load without weights_only=True")
    assert not offenders, "\n".join(offenders)


def test_pickle_payload_never_runs_through_launch(launch, evil, tmp_path):
    path, marker = evil
    before = snapshot(tmp_path)
    for args in ([f"resume={path}", "--train"], [f"system.weights={path}", "--train"], [f"resume={path}", "--test"]):
        code, err = launch(*args, f"exp_root_dir={tmp_path / 'out'}")
        assert code == 2, err
        assert "pickled Python objects" in err and path in err and "weights_only=True" in err
        assert not marker.exists()
    assert snapshot(tmp_path) == before and not (tmp_path / "out").exists()


def test_pickle_payload_never_runs_through_module_loaders(evil, tmp_path):
    from threestudio.utils.base import build_module
    from threestudio.utils.callbacks import AtomicCheckpointIO
    from threestudio.utils.misc import CheckpointError, load_module_weights, read_checkpoint

    path, marker = evil
    with pytest.raises(CheckpointError, match="pickled Python objects"):
        read_checkpoint(path)
    with pytest.raises(CheckpointError, match="pickled Python objects"):
        load_module_weights(path)
    with pytest.raises(CheckpointError, match="pickled Python objects"):
        AtomicCheckpointIO().load_checkpoint(path)
    with pytest.raises(CheckpointError, match="pickled Python objects"):
        build_module("solid-color-background", {"weights": path}, "system.background")
    assert not marker.exists()


def test_pickle_payload_never_runs_through_extract_color_mesh(evil, tmp_path, capsys):
    import importlib.util

    from threestudio.utils.config import dump_config, load_config

    path, marker = evil
    trial = tmp_path / "trial"
    (trial / "configs").mkdir(parents=True)
    (trial / "ckpts").mkdir()
    cfg = load_config(os.path.join(REPO, "configs", "reconstruction-example.yaml"),
                      cli_args=["system.geometry.pos_encoding_config.log2_hashmap_size=10"])
    from omegaconf import OmegaConf
    dump_config(str(trial / "configs" / "parsed.yaml"), OmegaConf.structured(cfg))
    os.replace(path, trial / "ckpts" / "last.ckpt")
    before = snapshot(trial)
    spec = importlib.util.spec_from_file_location("extract_color_mesh", os.path.join(REPO, "extract_color_mesh.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main([str(trial), "--resolution", "8"]) == 2
    assert "pickled Python objects" in capsys.readouterr().err
    assert not marker.exists() and snapshot(trial) == before


def test_pickle_payload_never_runs_through_the_model_packages(evil):
    from mvdream import MVDreamPipeline
    from sv3d import SV3DPipeline
    from sv3d.checkpoint import load_checkpoint

    path, marker = evil
    with pytest.raises(ValueError, match="weights_only=True|weights-only"):
        MVDreamPipeline.from_single_file(path)
    with pytest.raises(ValueError, match="weights-only"):
        load_checkpoint(path)
    with pytest.raises(ValueError, match="weights-only"):
        SV3DPipeline.from_single_file(path)
    assert not marker.exists()


def _toy_weights(tmp_path, state):
    path = tmp_path / "weights.ckpt"
    torch.save({"state_dict": state, "global_step": 4, "epoch": 0}, path)
    return str(path)


def test_partial_load_reports_matched_missing_unexpected(launch, tmp_path):
    """strict=False loads were silent: a checkpoint matching nothing meant "trained from scratch"."""
    partial = _toy_weights(tmp_path, {"field.weight": torch.ones(3, 3), "extra.head": torch.ones(2)})
    code, err = launch("--validate", f"exp_root_dir={tmp_path / 'a'}", f"system.weights={partial}")
    assert code == 0, err
    assert "loaded 1 tensors; 1 missing, kept as initialised: field.bias; 1 unexpected, ignored: extra.head" in err
    assert "prior" not in err  # frozen priors are never in checkpoints: not reported as missing

    unrelated = _toy_weights(tmp_path, {"unet.conv_in.weight": torch.ones(2)})
    code, err = launch("--train", f"exp_root_dir={tmp_path / 'b'}", f"system.weights={unrelated}")
    assert code == 2
    assert f"system.weights '{unrelated}': none of its 1 tensors match the system" in err
    assert not (tmp_path / "b").exists()
