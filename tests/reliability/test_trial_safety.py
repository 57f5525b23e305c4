"""A run never overwrites another run's record or checkpoints (launch.py)."""
import glob
import os
import stat

import torch

from conftest import TOY, snapshot


def ckpt_step(path):
    return torch.load(path, map_location="cpu", weights_only=True)["global_step"]


def test_fresh_trial_record_once_and_last_ckpt_once(trained_toy):
    """cmd.txt has one line per launch (was: one per stage, 2 for --train); raw/parsed written."""
    lines = open(os.path.join(trained_toy, "cmd.txt")).read().splitlines()
    assert len(lines) == 1 and "--train" in lines[0]
    assert sorted(os.listdir(os.path.join(trained_toy, "configs"))) == ["parsed.yaml", "raw.yaml"]
    assert ckpt_step(os.path.join(trained_toy, "ckpts", "last.ckpt")) == 6
    assert not glob.glob(os.path.join(trained_toy, "ckpts", ".tmp-*"))


def test_last_ckpt_is_written_once_per_save(launch, tmp_path, monkeypatch):
    """At the end of training last.ckpt was written by ModelCheckpoint and again by launch.py."""
    from threestudio.utils import callbacks

    writes = []
    original = callbacks.AtomicCheckpointIO.save_checkpoint

    def counting(self, checkpoint, path, storage_options=None):
        writes.append((os.path.basename(str(path)), checkpoint["global_step"]))
        return original(self, checkpoint, path, storage_options)

    monkeypatch.setattr(callbacks.AtomicCheckpointIO, "save_checkpoint", counting)
    code, err = launch("--train", f"exp_root_dir={tmp_path}", "trainer.max_steps=3")
    assert code == 0, err
    last = [w for w in writes if w[0] == "last.ckpt"]
    assert last == [("last.ckpt", 3)], writes


def test_checkpoint_files_have_the_mode_of_other_outputs(trained_toy):
    """mkstemp made checkpoints 0600 while configs/images were 0644 (umask)."""
    config_mode = stat.S_IMODE(os.stat(os.path.join(trained_toy, "configs", "parsed.yaml")).st_mode)
    for ckpt in glob.glob(os.path.join(trained_toy, "ckpts", "*.ckpt")):
        assert stat.S_IMODE(os.stat(ckpt).st_mode) == config_mode, ckpt


def test_test_and_export_with_resume_keep_the_training_record(launch, toy_trial):
    """--test/--export resume= rewrote configs/{raw,parsed}.yaml (with one-off overrides and resume: baked in)."""
    before = snapshot(toy_trial)
    ckpt = os.path.join(toy_trial, "ckpts", "epoch=0-step=3.ckpt")
    parsed = os.path.join(toy_trial, "configs", "parsed.yaml")
    for stage in ("--test", "--export", "--validate"):
        code, err = launch(stage, f"resume={ckpt}", "system.test_video_fps=7", config=parsed)
        assert code == 0, err
    after = snapshot(toy_trial)
    for rel, digest in before.items():
        if rel != "cmd.txt":
            assert after[rel] == digest, f"{rel} changed"
    snapshots = sorted(os.listdir(os.path.join(toy_trial, "configs")))
    assert [s.split("@")[0] for s in snapshots] == ["export", "parsed.yaml", "raw.yaml", "test", "validate"]
    test_record = open(glob.glob(os.path.join(toy_trial, "configs", "test@*.yaml"))[0]).read()
    assert "test_video_fps: 7" in test_record and "epoch=0-step=3.ckpt" in test_record
    assert "test_video_fps: 7" not in open(parsed).read()
    lines = open(os.path.join(toy_trial, "cmd.txt")).read().splitlines()
    assert len(lines) == 4 and "--test" in lines[1] and "--export" in lines[2]
    assert os.path.isfile(os.path.join(toy_trial, "save", "it3-export", "weights.json"))


def test_train_from_a_trial_config_without_resume_gets_a_new_folder(launch, toy_trial):
    """The saved timestamp recreated the trial name: a fresh run replaced ckpts/last.ckpt of the old one."""
    before = snapshot(toy_trial)
    parsed = os.path.join(toy_trial, "configs", "parsed.yaml")
    # (the copy lives under another exp_root_dir than the one recorded in its parsed.yaml)
    root = os.path.dirname(os.path.dirname(toy_trial))
    code, err = launch("--train", "trainer.max_steps=1", f"exp_root_dir={root}", config=parsed)
    assert code == 0, err
    assert "already holds a run; this new run goes to" in err and "resume=" in err
    assert snapshot(toy_trial) == before
    siblings = [d for d in os.listdir(os.path.dirname(toy_trial)) if d != os.path.basename(toy_trial)]
    assert len(siblings) == 1
    new = os.path.join(os.path.dirname(toy_trial), siblings[0])
    assert ckpt_step(os.path.join(new, "ckpts", "last.ckpt")) == 1


def test_train_into_an_existing_tagged_folder_stops(launch, toy_trial):
    """Without a timestamp the same folder would be reused: stop, say how to continue or rename."""
    before = snapshot(toy_trial)
    tagged = os.path.dirname(toy_trial)
    root = os.path.dirname(os.path.dirname(toy_trial))
    name = os.path.basename(toy_trial)
    code, err = launch("--train", f"exp_root_dir={root}", f"tag={name}", "use_timestamp=false")
    assert code == 2
    assert f"'{os.path.join(tagged, name)}' already holds a run" in err
    assert f"resume={os.path.join(tagged, name, 'ckpts', 'last.ckpt')}" in err
    assert snapshot(toy_trial) == before


def test_resumed_training_cleans_orphans_and_keeps_the_first_record(launch, toy_trial):
    """Leftover .tmp-*.ckpt of a hard-killed write stayed forever; resume rewrote raw/parsed.yaml."""
    ckpts = os.path.join(toy_trial, "ckpts")
    orphan = os.path.join(ckpts, ".tmp-0123456789ab.ckpt")
    open(orphan, "wb").write(b"half a checkpoint")
    open(os.path.join(toy_trial, "configs", "parsed.yaml.tmp"), "w").write("half a config")
    configs_before = {k: v for k, v in snapshot(toy_trial).items() if k.startswith("configs/") and "tmp" not in k}
    code, err = launch("--train", f"resume={os.path.join(ckpts, 'last.ckpt')}", "trainer.max_steps=7",
                       config=os.path.join(toy_trial, "configs", "parsed.yaml"))
    assert code == 0, err
    assert "Removed 1 unfinished temporary file" in err
    assert not glob.glob(os.path.join(ckpts, ".tmp-*")) and not glob.glob(os.path.join(toy_trial, "configs", "*.tmp"))
    after = snapshot(toy_trial)
    for rel, digest in configs_before.items():
        assert after[rel] == digest
    assert glob.glob(os.path.join(toy_trial, "configs", "train@*.yaml"))
    assert ckpt_step(os.path.join(ckpts, "last.ckpt")) == 7


def test_uncreatable_exp_root_dir_names_the_key(launch, tmp_path):
    """An exp_root_dir under a file (or in /proc) crashed with a bare OSError."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for root in (blocker / "outputs", "/proc/threestudio-outputs"):
        code, err = launch("--train", f"exp_root_dir={root}")
        assert code == 2, err
        assert f"exp_root_dir={root}: cannot create" in err
    assert blocker.read_text() == "not a folder" and sorted(os.listdir(tmp_path)) == ["a-file"]


def test_testing_or_exporting_again_keeps_the_earlier_outputs(launch, toy_trial):
    """A second --test/--export of a step replaced its it<N>-test/ and it<N>-export/ (e.g. a re-export with
    other settings lost the first); now they go to it<N>.2-..., and a third launch to it<N>.3-..."""
    ckpt = os.path.join(toy_trial, "ckpts", "last.ckpt")
    parsed = os.path.join(toy_trial, "configs", "parsed.yaml")
    save = os.path.join(toy_trial, "save")
    assert os.path.isdir(os.path.join(save, "it6-test")) and not os.path.exists(os.path.join(save, "it6-export"))
    code, err = launch("--export", f"resume={ckpt}", config=parsed)
    assert code == 0, err
    assert os.path.isfile(os.path.join(save, "it6-export", "weights.json"))  # nothing to keep: the plain name
    before = snapshot(save)
    for stage in ("--test", "--export"):
        code, err = launch(stage, f"resume={ckpt}", config=parsed)
        assert code == 0, err
        folder = "it6.2-test" if stage == "--test" else "it6.2-export"
        assert f"save/{folder}" in err and "earlier launch" in err
    after = snapshot(save)
    assert {rel: after[rel] for rel in before} == before  # every earlier file is still there, unchanged
    assert os.path.isfile(os.path.join(save, "it6.2-export", "weights.json"))
    assert sorted(os.listdir(os.path.join(save, "it6.2-test"))) == sorted(os.listdir(os.path.join(save, "it6-test")))
    code, err = launch("--export", f"resume={ckpt}", config=parsed)
    assert code == 0, err
    assert os.path.isfile(os.path.join(save, "it6.3-export", "weights.json"))
