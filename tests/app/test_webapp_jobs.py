"""The web app's recipes (input checks, upload staging) and job queue (one at a time, stop = resumable checkpoint)."""
import json
import os
import time
import zipfile

import pytest
import torch

from threestudio.webapp.jobs import JobQueue
from threestudio.webapp.recipes import JobInputs, RecipeInputError, find_recipe, stage_views

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE = os.path.join(REPO, "load", "example_primitives")
TINY = ["data.height=24", "data.width=24", "data.batch_size=256", "data.n_test_views=2", "data.n_val_views=1",
        "trainer.val_check_interval=1000", "checkpoint.every_n_train_steps=1000",
        "system.geometry.pos_encoding_config.log2_hashmap_size=12", "system.renderer.num_samples_per_ray=32",
        "system.export_after_test=false", "trainer.enable_progress_bar=false"]


def test_images_and_transforms_are_staged_flat_with_rewritten_paths(tmp_path):
    files = [os.path.join(EXAMPLE, "transforms_train.json")] + [
        os.path.join(EXAMPLE, "train", f"r_{i:03d}.png") for i in range(24)]
    root = stage_views(files, str(tmp_path / "staging"))
    meta = json.load(open(os.path.join(root, "transforms_train.json")))
    original = json.load(open(os.path.join(EXAMPLE, "transforms_train.json")))
    assert [f["file_path"] for f in meta["frames"]] == [os.path.basename(f["file_path"]) for f in original["frames"]]
    assert [f["transform_matrix"] for f in meta["frames"]] == [f["transform_matrix"] for f in original["frames"]]
    assert len([f for f in os.listdir(root) if f.endswith(".png")]) == 24
    # the user's own files are untouched
    assert json.load(open(os.path.join(EXAMPLE, "transforms_train.json"))) == original


def test_a_zip_is_extracted_to_its_dataset_folder_and_a_zip_slip_is_refused(tmp_path):
    archive = tmp_path / "views.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(os.path.join(EXAMPLE, "transforms_train.json"), "object/transforms_train.json")
        z.write(os.path.join(EXAMPLE, "train", "r_000.png"), "object/train/r_000.png")
    root = stage_views([str(archive)], str(tmp_path / "staging"))
    assert root.endswith(os.path.join("dataset", "object")) and os.path.isfile(os.path.join(root, "train", "r_000.png"))
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("../../outside.txt", "x")
    with pytest.raises(RecipeInputError, match="outside the staging folder"):
        stage_views([str(evil)], str(tmp_path / "staging2"))
    assert not (tmp_path / "outside.txt").exists()


def test_recipes_check_their_inputs_before_anything_runs(tmp_path):
    mvdream = find_recipe("Text → 3D (MVDream)")
    with pytest.raises(RecipeInputError, match="write a prompt"):
        mvdream.build_overrides(JobInputs(checkpoint="x"), str(tmp_path))
    with pytest.raises(RecipeInputError, match="give the local path of the checkpoint"):
        mvdream.build_overrides(JobInputs(prompt="a cat"), str(tmp_path))
    with pytest.raises(RecipeInputError, match="does not exist"):
        mvdream.build_overrides(JobInputs(prompt="a cat", checkpoint=str(tmp_path / "no.pt")), str(tmp_path))
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"x")
    args = mvdream.build_overrides(JobInputs(prompt="a cat", checkpoint=str(ckpt), preset="12gb", max_steps=50,
                                             seed=3, extra=["trainer.val_check_interval=10", "", "# note"]),
                                   str(tmp_path))
    assert args == ["system.prompt_processor.prompt=a cat", f"system.guidance.pretrained_model_name_or_path={ckpt}",
                    "preset=12gb", "trainer.max_steps=50", "seed=3", "trainer.val_check_interval=10"]
    with pytest.raises(RecipeInputError, match="not of the form key=value"):
        mvdream.build_overrides(JobInputs(prompt="a", checkpoint=str(ckpt), extra=["oops"]), str(tmp_path))
    recon = find_recipe("Images → textured mesh")
    assert recon.build_overrides(JobInputs(), str(tmp_path)) == [f"data.dataroot={EXAMPLE}"]


@pytest.mark.slow
def test_one_job_at_a_time_and_stop_leaves_a_resumable_checkpoint(tmp_path):
    queue = JobQueue(str(tmp_path / "outputs"))
    recon = find_recipe("Images → textured mesh")
    try:
        first = queue.submit(recon, JobInputs(max_steps=100000, extra=TINY))
        second = queue.submit(recon, JobInputs(max_steps=3, extra=TINY))
        assert first.trial_dir != second.trial_dir and first.trial_dir.endswith("-job1")
        deadline = time.time() + 300
        while (first.progress() or {}).get("step", 0) < 3:
            assert time.time() < deadline and first.status == "running", first.log_tail()
            assert second.status == "queued"  # one job at a time
            time.sleep(0.5)
        assert "cancelled" not in queue.stop(second.id) and second.status == "cancelled"
        assert "stopping after this step" in queue.stop(first.id)
        while first.status == "stopping":
            assert time.time() < deadline, first.log_tail()
            time.sleep(0.5)
        assert first.status == "stopped" and first.returncode == 0, first.log_tail()
        ckpt = torch.load(os.path.join(first.trial_dir, "ckpts", "last.ckpt"), map_location="cpu", weights_only=True)
        assert 3 <= ckpt["global_step"] < 100000
        progress = first.progress()
        assert progress["stage"] == "stopped" and progress["video"].endswith("-test.mp4")
        assert second.proc is None  # the cancelled job never started
        assert [row[2] for row in queue.table()] == ["cancelled", "stopped"]
    finally:
        queue.close()


# a pipeline with its own command line: writes a launch.py-like stage with progress.json into a subfolder, then a video
FAKE_PIPELINE = """
import json, os, sys
out = sys.argv[1]
os.makedirs(os.path.join(out, "stage3", "trial", "save"), exist_ok=True)
open(os.path.join(out, "stage1.mp4"), "wb").write(b"video")
json.dump({"stage": "done", "step": 7, "max_steps": 7}, open(os.path.join(out, "stage3", "trial", "progress.json"), "w"))
"""


def test_a_pipeline_with_its_own_command_runs_in_its_own_folder(tmp_path):
    from threestudio.webapp.recipes import Recipe

    script = tmp_path / "fake_pipeline.py"
    script.write_text(FAKE_PIPELINE)
    seen = {}

    def command(inputs, staging, out):
        seen.update(staging=staging, out=out)
        return [str(script), out]

    recipe = Recipe("Fake → 3D", None, ("image",), command=command)
    queue = JobQueue(str(tmp_path / "outputs"))
    try:
        with pytest.raises(RecipeInputError, match="upload an RGBA image"):
            queue.submit(recipe, JobInputs())
        job = queue.submit(recipe, JobInputs(image="x.png"))
        assert job.trial_dir == seen["out"] and os.path.basename(os.path.dirname(job.trial_dir)) == "fake-3d"
        deadline = time.time() + 120
        while job.status in ("queued", "running"):
            assert time.time() < deadline, job.log_tail()
            time.sleep(0.2)
        assert job.status == "done", job.log_tail()
        assert job.progress()["step"] == 7  # the inner stage's progress file
        os.remove(os.path.join(job.trial_dir, "stage3", "trial", "progress.json"))
        assert job.progress()["video"].endswith("stage1.mp4")  # else the newest video in its folder
    finally:
        queue.close()


def test_a_failed_run_shows_the_end_of_its_log(tmp_path):
    from threestudio.webapp.jobs import progress_markdown
    from threestudio.webapp.recipes import Recipe

    script = tmp_path / "fails.py"
    script.write_text("import sys\nprint('loading the model')\nprint('boom: no such file', file=sys.stderr)\nsys.exit(1)\n")
    queue = JobQueue(str(tmp_path / "outputs"))
    try:
        job = queue.submit(Recipe("Fails", None, (), command=lambda i, s, o: [str(script)]), JobInputs())
        deadline = time.time() + 120
        while job.status in ("queued", "running"):
            assert time.time() < deadline
            time.sleep(0.2)
        text = progress_markdown(job, job.progress())
        assert job.status == "failed" and "**failed**" in text
        assert "exit status 1" in text and "boom: no such file" in text and "loading the model" in text
        assert progress_markdown(None, None).startswith("No job yet")
    finally:
        queue.close()
