"""A queue of `launch.py` runs, one at a time, each in an ordinary trial folder (so it resumes from the command line).

Stop = SIGINT to the run: the launcher finishes the step, saves `ckpts/last.ckpt` and renders the test video;
a second stop exits at once. A queued job that has not started is simply removed.
"""
from __future__ import annotations

import glob
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Optional

from threestudio.utils.oom import OOM_EXIT_CODE
from threestudio.utils.progress import PROGRESS_FILE, read_progress
from threestudio.webapp.recipes import REPO_ROOT, JobInputs, Recipe


@dataclass
class Job:
    id: int
    recipe: str
    argv: list[str]
    trial_dir: str
    log_path: str
    status: str = "queued"  # queued | running | stopping | done | stopped | out_of_memory | failed | cancelled
    returncode: Optional[int] = None
    submitted: float = field(default_factory=time.time)
    stop_requests: int = 0
    own_command: bool = False  # a pipeline with its own command line (trial_dir is its output folder)
    proc: Optional[subprocess.Popen] = None

    def progress(self) -> Optional[dict]:
        """The run's progress.json; for a pipeline with its own command (trial_dir = its output folder): the newest
        progress.json of a launch.py stage inside it, else the newest video / GLB found there."""
        state = read_progress(self.trial_dir)
        if state is not None or not self.own_command:
            return state
        inner = sorted(glob.glob(os.path.join(self.trial_dir, "**", PROGRESS_FILE), recursive=True),
                       key=os.path.getmtime)
        if inner:
            return read_progress(os.path.dirname(inner[-1]))
        if not os.path.isdir(self.trial_dir):
            return None

        def newest(pattern: str) -> Optional[str]:
            found = glob.glob(os.path.join(self.trial_dir, "**", pattern), recursive=True)
            return max(found, key=os.path.getmtime) if found else None

        return {"stage": self.status, "step": None, "max_steps": None, "video": newest("*.mp4"),
                "mesh": newest("*.glb"), "latest_image": None}

    def log_tail(self, n: int = 20) -> str:
        try:
            with open(self.log_path, errors="replace") as fp:
                return "".join(fp.readlines()[-n:])
        except OSError:
            return ""


def trial_dir_for(config: str, overrides: list[str]) -> str:
    """The trial folder launch.py will use (the config resolved here; no model is built)."""
    from threestudio.utils.config import load_config

    return os.path.abspath(load_config(config, cli_args=overrides).trial_dir)


class JobQueue:
    def __init__(self, outputs_root: str, python: str = sys.executable) -> None:
        self.outputs_root = os.path.abspath(outputs_root)
        self.python = python
        self.jobs: list[Job] = []
        self._last_id = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._worker = threading.Thread(target=self._run, name="threestudio-jobs", daemon=True)
        self._worker.start()

    # ---------------------------------------------------------------------------------------- submit
    def submit(self, recipe: Recipe, inputs: JobInputs) -> Job:
        """Check the inputs, resolve the trial folder and queue the run (errors are raised before queueing)."""
        with self._lock:  # ids are taken under the lock: two pages may submit at once
            self._last_id += 1
            job_id = self._last_id
        staging = os.path.join(self.outputs_root, ".app_uploads", f"job{job_id}-{int(time.time())}")
        overrides = recipe.build_overrides(inputs, staging)
        stamp = datetime.now().strftime("@%Y%m%d-%H%M%S")
        log = os.path.join(self.outputs_root, ".app_logs", f"job{job_id}{stamp}.log")
        os.makedirs(self.outputs_root, exist_ok=True)
        if recipe.command is not None:  # a pipeline with its own command line, writing into its own folder
            slug = re.sub(r"[^a-z0-9]+", "-", recipe.name.lower()).strip("-")
            out = os.path.join(self.outputs_root, slug, f"job{job_id}{stamp}")
            argv = [self.python, *recipe.command(inputs, staging, out)]
            return self._queue(Job(job_id, recipe.name, argv, out, log, own_command=True))
        # an ordinary timestamped trial folder, with the timestamp fixed here so the app knows where it is
        # ('@' cannot start a YAML scalar: the value is quoted)
        overrides = [f"exp_root_dir={self.outputs_root}", f"timestamp='{stamp}-job{job_id}'", *overrides]
        config = os.path.join(REPO_ROOT, recipe.config)
        trial = trial_dir_for(config, overrides)
        argv = [self.python, os.path.join(REPO_ROOT, "launch.py"), "--config", config, "--train", *overrides]
        return self._queue(Job(job_id, recipe.name, argv, trial, log))

    def _queue(self, job: Job) -> Job:
        with self._lock:
            self.jobs.append(job)
        self._wake.set()
        return job

    def get(self, job_id: Optional[int]) -> Optional[Job]:
        with self._lock:
            return next((j for j in self.jobs if j.id == job_id), None)

    # ------------------------------------------------------------------------------------------ stop
    def stop(self, job_id: int) -> str:
        job = self.get(job_id)
        if job is None:
            return "no such job"
        with self._lock:
            if job.status == "queued":
                job.status = "cancelled"
                return f"job {job_id} removed from the queue"
            if job.proc is None or job.proc.poll() is not None:
                return f"job {job_id} is not running"
            job.stop_requests += 1
            job.status = "stopping"
            job.proc.send_signal(signal.SIGINT)
        if job.stop_requests == 1:
            return (f"job {job_id}: stopping after this step; last.ckpt is saved and the test video rendered "
                    "(stop again to exit at once)")
        return f"job {job_id}: exiting now"

    def close(self) -> None:
        """Stop the worker; a running job gets SIGINT twice (checkpoint, then exit)."""
        self._closed = True
        self._wake.set()
        for job in self.jobs:
            if job.proc is not None and job.proc.poll() is None:
                job.proc.send_signal(signal.SIGINT)
                try:
                    job.proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    job.proc.send_signal(signal.SIGINT)
                    job.proc.wait(timeout=30)

    # ---------------------------------------------------------------------------------------- worker
    def _next(self) -> Optional[Job]:
        with self._lock:
            return next((j for j in self.jobs if j.status == "queued"), None)

    def _run(self) -> None:
        while not self._closed:
            job = self._next()
            if job is None:
                self._wake.wait(timeout=1.0)
                self._wake.clear()
                continue
            self._execute(job)

    def _execute(self, job: Job) -> None:
        os.makedirs(os.path.dirname(job.log_path), exist_ok=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        packages = [os.path.join(REPO_ROOT, "extensions", p) for p in sorted(os.listdir(
            os.path.join(REPO_ROOT, "extensions")))] if os.path.isdir(os.path.join(REPO_ROOT, "extensions")) else []
        env["PYTHONPATH"] = os.pathsep.join(packages + [env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        with open(job.log_path, "w") as log:
            with self._lock:
                if job.status != "queued":
                    return
                job.status = "running"
                job.proc = subprocess.Popen(job.argv, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            stdin=subprocess.DEVNULL)
            code = job.proc.wait()
        progress = job.progress() or {}
        with self._lock:
            job.returncode = code
            if code == OOM_EXIT_CODE:
                job.status = "out_of_memory"
            elif code == 0:
                job.status = "stopped" if progress.get("stage") == "stopped" else "done"
            elif job.stop_requests:
                job.status = "stopped"
            else:
                job.status = "failed"

    # -------------------------------------------------------------------------------------- display
    def table(self) -> list[list]:
        """Rows (id, recipe, status, step, trial folder) for the queue view, newest first."""
        rows = []
        with self._lock:
            jobs = list(self.jobs)
        for job in reversed(jobs):
            p = job.progress() or {}
            step = f"{p.get('step', 0)}/{p.get('max_steps') or '?'}" if p else ""
            rows.append([job.id, job.recipe, job.status, step, job.trial_dir])
        return rows


# ------------------------------------------------------------------------------------------ status text
def _duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}h {seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m {seconds % 60:02d}s"


def progress_markdown(job: Optional[Job], progress: Optional[dict]) -> str:
    """The page's status text (Markdown) of a job and its progress state."""
    if job is None:
        return "No job yet: pick a recipe and press **Start**."
    head = f"**Job {job.id}** · {job.recipe} · **{job.status}**  \nTrial folder: `{job.trial_dir}`"
    if not progress:
        return head + ("  \nStarting…" if job.status in ("queued", "running") else "") + _failure(job)
    loss = progress.get("loss")
    rate = progress.get("it_per_s")
    line = f"stage **{progress.get('stage')}**"
    if progress.get("step") is not None:
        line += f" · step **{progress['step']}/{progress.get('max_steps') or '?'}**"
    if loss is not None:
        line += f" · loss {loss:.4g}"
    if rate:
        line += f" · {rate:.2f} it/s · ETA {_duration(progress.get('eta_s'))}"
    text = f"{head}  \n{line}"
    if progress.get("message"):
        text += f"\n\n```\n{progress['message']}\n```"
    return text + _failure(job)


def _failure(job: Job) -> str:
    """The end of the run's log when it failed, so the reason is on the page."""
    if job.status != "failed":
        return ""
    return f"\n\nThe run failed (exit status {job.returncode}); end of its log `{job.log_path}`:\n```\n{job.log_tail(15)}\n```"
