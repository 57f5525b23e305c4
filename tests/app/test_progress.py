"""progress.json: atomic writes, newest outputs by step number, merging updates."""
import os

from threestudio.utils.progress import latest_outputs, read_progress, update_progress, write_progress


def touch(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "wb").close()


def test_latest_outputs_pick_the_highest_step_not_the_last_name(tmp_path):
    save = tmp_path / "save"
    for name in ("it9-0.png", "it10-0.png", "it10-1.png", "it100-test/0.png", "it9-test.mp4", "it12-test.mp4",
                 "it12-export/model.glb", "it3-export/model.glb"):
        touch(str(save / name))
    out = latest_outputs(str(tmp_path))
    assert os.path.basename(out["latest_image"]).startswith("it10-")  # it100-test/0.png is a test frame, not validation
    assert out["video"].endswith("it12-test.mp4")
    assert out["mesh"].endswith(os.path.join("it12-export", "model.glb"))
    assert latest_outputs(str(tmp_path / "empty")) == {"latest_image": None, "video": None, "mesh": None}


def test_write_read_and_update(tmp_path):
    assert read_progress(str(tmp_path)) is None
    write_progress(str(tmp_path), {"stage": "train", "step": 3})
    update_progress(str(tmp_path), stage="done")
    state = read_progress(str(tmp_path))
    assert state["stage"] == "done" and state["step"] == 3 and "time" in state
    assert [f for f in os.listdir(tmp_path) if f.startswith(".progress-")] == []  # no temporary file left


def test_outputs_written_again_under_a_kept_name_are_the_newest(tmp_path):
    """A second test/export/validation of a step goes to it<N>.2-... (SaverMixin.output_path): those count,
    and at the same step the newer file wins."""
    save = tmp_path / "save"
    for i, name in enumerate(("it10-0.png", "it10-test.mp4", "it10-export/model.glb",
                              "it10.2-0.png", "it10.2-test.mp4", "it10.2-export/model.glb")):
        touch(str(save / name))
        os.utime(str(save / name), (1000 + i, 1000 + i))
    out = latest_outputs(str(tmp_path))
    assert os.path.basename(out["latest_image"]) == "it10.2-0.png"
    assert out["video"].endswith("it10.2-test.mp4")
    assert out["mesh"].endswith(os.path.join("it10.2-export", "model.glb"))
