"""How `clipo.report` tells how each job of a sweep ended, from what the job left in its folder."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

from clipo.multirun.status import job_status, swept_keys
from clipo.run.lock_owner import LOCK_FILE, this_process


def _job(folder, summary=None, job=None, lock=None):
    folder.mkdir(parents=True)
    for name, content in (("summary.json", summary), ("job.json", job), (LOCK_FILE, lock)):
        if content is not None:
            (folder / name).write_text(json.dumps(content))
    return folder


def test_each_status_and_its_line(tmp_path):
    assert job_status(_job(tmp_path / "done", summary={"metrics": {}})) == ("completed", "")
    crashed = _job(tmp_path / "crash", summary={"crashed": True, "error": "RuntimeError: boom"},
                   job={"status": "failed", "error": "training failed in RL step 2: RuntimeError: boom; ..."})
    assert job_status(crashed) == ("crashed", "RuntimeError: boom")  # the exception, not the whole console line
    failed = _job(tmp_path / "config", job={"status": "failed", "error": "invalid configuration:\n  - x must be >= 0"})
    assert job_status(failed) == ("failed", "invalid configuration: - x must be >= 0")
    stopped = _job(tmp_path / "stop", summary={"interrupted": True, "signal": "SIGTERM"})
    assert job_status(stopped)[0] == "interrupted" and "stopped by SIGTERM; continue with" in job_status(stopped)[1]
    assert job_status(_job(tmp_path / "empty"))[0] == "no result"


def test_a_lock_tells_a_running_job_from_a_killed_one(tmp_path):
    assert job_status(_job(tmp_path / "live", lock=this_process()))[0] == "running"
    elsewhere = {**this_process(), "host": "another-node"}  # cannot be checked from here: counted as running
    assert job_status(_job(tmp_path / "remote", lock=elsewhere))[0] == "running"
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = {**this_process(), "pid": int(ended.stdout), "proc_start": None}
    status, line = job_status(_job(tmp_path / "killed", lock=dead))
    assert status == "killed" and f"pid {dead['pid']} on {socket.gethostname()}" in line
    assert os.getpid() != dead["pid"]


def test_swept_keys_are_the_ones_whose_value_differs():
    jobs = [["loss=infonce", "seed=0", "model=tiny"], ["loss=none", "seed=0", "model=tiny"],
            ["loss=infonce", "seed=1", "model=tiny"]]
    assert swept_keys(jobs) == ["loss", "seed"]
