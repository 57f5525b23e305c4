"""launch.py end to end with a tiny test-only system (tests/core/fixtures/custom/toy_system.py)."""
import csv
import glob
import importlib.util
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(REPO, "tests", "core", "fixtures")
TOY = os.path.join(FIXTURES, "toy.yaml")

pytestmark = pytest.mark.slow


def _env(custom=os.path.join(FIXTURES, "custom")):
    env = dict(os.environ, THREESTUDIO_CUSTOM_PATH=custom, PYTHONUNBUFFERED="1")
    return env


def _launcher():
    spec = importlib.util.spec_from_file_location("launch", os.path.join(REPO, "launch.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def launch(*args, custom=os.path.join(FIXTURES, "custom"), check=True):
    """Run launch.py's main() in this process (the signal tests below use real subprocesses)."""
    old = os.environ.get("THREESTUDIO_CUSTOM_PATH")
    os.environ["THREESTUDIO_CUSTOM_PATH"] = custom
    try:
        code = _launcher().main([*args, "trainer.enable_progress_bar=false"])
    finally:
        if old is None:
            os.environ.pop("THREESTUDIO_CUSTOM_PATH")
        else:
            os.environ["THREESTUDIO_CUSTOM_PATH"] = old
    if check:
        assert code == 0, f"launch failed with exit code {code}"
    return code


def losses(trial):
    rows = []
    for path in sorted(glob.glob(os.path.join(trial, "csv_logs", "version_*", "metrics.csv"))):
        with open(path) as fp:
            rows += [(int(r["step"]), r["train/loss"]) for r in csv.DictReader(fp) if r.get("train/loss")]
    return rows


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    launch("--config", TOY, "--train", f"exp_root_dir={root}", "tag=full")
    return root / "toy" / "full"


def test_trial_layout(full_run):
    for rel in ("cmd.txt", "configs/raw.yaml", "configs/parsed.yaml", "ckpts/last.ckpt",
                "ckpts/epoch=0-step=5.ckpt", "ckpts/epoch=0-step=10.ckpt",
                "save/it5-0.png", "save/it5-1.png", "save/it10-0.png", "save/it12-test.mp4",
                "save/it12-test/0.png", "save/it12-test/5.png"):
        assert (full_run / rel).exists(), rel
    assert glob.glob(str(full_run / "tb_logs" / "version_0" / "events.out.tfevents.*"))
    assert "--train" in (full_run / "cmd.txt").read_text()
    # no temporary checkpoint files are left behind
    assert not glob.glob(str(full_run / "ckpts" / ".tmp-*"))
    ckpt = load(full_run / "ckpts" / "last.ckpt")
    assert ckpt["global_step"] == 12
    # the frozen prior stand-in is never written to checkpoints
    assert set(ckpt["state_dict"]) == {"field.weight", "field.bias"}
    # each loss term and its scheduled weight are logged
    with open(glob.glob(str(full_run / "csv_logs" / "version_0" / "metrics.csv"))[0]) as fp:
        rows = [r for r in csv.DictReader(fp) if r.get("train/lambda_reg")]
    assert float(rows[5]["train/lambda_reg"]) == pytest.approx(0.5)
    assert {"train/loss_fit", "train/loss_reg"} <= set(rows[0])


def test_resume_equals_uninterrupted_run(full_run):
    root = full_run.parent.parent
    launch("--config", TOY, "--train", f"exp_root_dir={root}", "tag=part", "trainer.max_steps=7")
    part = root / "toy" / "part"
    launch("--config", str(part / "configs" / "parsed.yaml"), "--train",
           f"resume={part / 'ckpts' / 'last.ckpt'}", "trainer.max_steps=12")
    a, b = load(full_run / "ckpts" / "last.ckpt"), load(part / "ckpts" / "last.ckpt")
    assert b["global_step"] == 12
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    assert losses(part) == losses(full_run)
    assert len(losses(part)) == 12
    # the resumed run continued in the same trial folder
    assert (part / "save" / "it12-test.mp4").exists()


def test_test_and_export_from_checkpoint(full_run):
    parsed = full_run / "configs" / "parsed.yaml"
    ckpt = full_run / "ckpts" / "epoch=0-step=10.ckpt"
    launch("--config", str(parsed), "--test", f"resume={ckpt}")
    assert (full_run / "save" / "it10-test.mp4").exists()
    launch("--config", str(parsed), "--export", f"resume={ckpt}")
    assert (full_run / "save" / "it10-export" / "weights.json").exists()


def _start(tmp_path, tag):
    marker = tmp_path / f"{tag}.marker"
    cmd = [sys.executable, os.path.join(REPO, "launch.py"), "--config", TOY, "--train",
           f"exp_root_dir={tmp_path}", f"tag={tag}", "trainer.max_steps=100000",
           "system.step_sleep=0.05", f"system.marker_file={marker}", "trainer.enable_progress_bar=false"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not marker.exists() or int(marker.read_text() or 0) < 3:
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, "training did not start"
        time.sleep(0.1)
    return proc, tmp_path / "toy" / tag


def test_first_ctrl_c_saves_last_ckpt_and_runs_test(tmp_path):
    proc, trial = _start(tmp_path, "interrupt")
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "Ctrl-C: stopping after this step" in out
    step = load(trial / "ckpts" / "last.ckpt")["global_step"]
    assert 3 <= step < 100000
    assert (trial / "save" / f"it{step}-test.mp4").exists()


def test_second_ctrl_c_exits(tmp_path):
    proc, trial = _start(tmp_path, "twice")
    proc.send_signal(signal.SIGINT)
    time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0, out
    assert "Second Ctrl-C: exiting now" in out or "Ctrl-C while writing" in out, out
    assert "unexpected pos" not in out
    assert not glob.glob(str(trial / "save" / "*-test.mp4"))


def test_config_error_fails_before_any_work(tmp_path, capsys):
    code = launch("--config", TOY, "--train", f"exp_root_dir={tmp_path}", "system.optimiser.lr=1", check=False)
    assert code == 2
    assert "Unknown config key 'system.optimiser'" in capsys.readouterr().err
    assert not (tmp_path / "toy").exists()


def test_failing_custom_module_is_reported_and_others_load(tmp_path, capsys):
    yaml = tmp_path / "fine.yaml"
    yaml.write_text("name: fine\ntag: t\nuse_timestamp: false\ndata_type: random-camera-datamodule\n"
                    "system_type: fine-custom-system\n")
    code = launch("--config", str(yaml), "--validate", f"exp_root_dir={tmp_path}",
                  custom=os.path.join(FIXTURES, "broken_custom"), check=False)
    err = capsys.readouterr().err
    assert "aaa_broken.py failed to import and is skipped" in err
    assert "this custom module is broken on purpose" in err
    assert "Unknown module" not in err  # zzz_fine registered its system
    assert code == 0, err
    assert (tmp_path / "fine" / "t" / "save" / "validated-0.json").exists()
