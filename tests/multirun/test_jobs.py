"""A sweep with failing jobs: each failure is recorded and the other jobs run; `clipo.report` lists them.

Before: a job's SystemExit ended the basic launcher's whole sweep, and `clipo.report` presented the jobs
that had run as the whole sweep ("1 runs; swept: nothing").
"""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from clipo.report import main
from tests.multirun.sweeps import run_multirun, sweep_folder

CRASHING_REWARD = '''
def reward(completions, **kwargs):
    raise RuntimeError("boom in the reward")
'''


@pytest.fixture(scope="module")
def failing_sweep(tmp_path_factory):
    """Three jobs in one process (the basic launcher): job 0 trains, job 1 crashes in its first RL step (its
    reward function raises), job 2 is refused before its model loads (a reward module that does not import)."""
    root = tmp_path_factory.mktemp("failing_sweep")
    (root / "crashy.py").write_text(CRASHING_REWARD)  # the working directory is importable
    result = run_multirun(root, "reward_funcs=[verifier],[verifier,'crashy:reward'],[verifier,'nosuch:fn']",
                          "data.val=null")
    return result, sweep_folder(root)


def test_a_failing_job_is_recorded_and_the_others_run(failing_sweep):
    result, folder = failing_sweep
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]  # the sweep ran every job, then says one failed
    assert "job 1 failed (above); the other jobs run" in output and "job 2 failed" in output
    assert "JobFailed: training failed in RL step 1: RewardFunctionError" in output  # Hydra names the first failure
    jobs = {job: json.loads((folder / str(job) / "job.json").read_text()) for job in range(3)}
    assert [jobs[j]["status"] for j in range(3)] == ["completed", "failed", "failed"]
    assert jobs[0]["returned"] == json.loads((folder / "0" / "summary.json").read_text())["metrics"]["train/reward"]
    assert "boom in the reward" in jobs[1]["error"] and "module 'nosuch' does not import" in jobs[2]["error"]
    assert json.loads((folder / "1" / "summary.json").read_text())["crashed"] is True  # train() recorded the crash
    assert not any((folder / str(j) / ".clipo.lock").exists() for j in range(3))  # every job gave its folder back


def test_report_lists_the_failed_jobs_with_their_error_line(failing_sweep, tmp_path, capsys):
    _, folder = failing_sweep
    assert main([str(folder), "--out", str(tmp_path)]) == 0
    assert "report of 3 runs" in (printed := capsys.readouterr().out)
    assert "(1 crashed, 1 failed: listed in report.md)" in printed
    table = pd.read_csv(tmp_path / "report.csv").set_index("run")
    assert table["status"].to_dict() == {0: "completed", 1: "crashed", 2: "failed"}
    markdown = (tmp_path / "report.md").read_text()
    assert "3 runs (1 completed, 1 crashed, 1 failed); swept: reward_funcs." in markdown
    failed = markdown.split("## Jobs that did not complete")[1].split("## Runs")[0]
    assert "| 1 | [verifier,'crashy:reward'] | crashed | RewardFunctionError: reward function 'reward' raised " \
           "RuntimeError: boom in the reward" in failed
    assert "| 2 | [verifier,'nosuch:fn'] | failed | invalid configuration: - reward function 'nosuch:fn'" in failed


def test_report_counts_the_planned_jobs_that_never_started(failing_sweep, tmp_path):
    """The sweep's grid comes from its multirun.yaml: with only job 0 left (as when a sweep was stopped after
    its first job), the report says 1 run of 3 planned and lists the two others with their choices."""
    _, folder = failing_sweep
    survivor = tmp_path / "sweep"
    shutil.copytree(folder, survivor, ignore=shutil.ignore_patterns("1", "2", "policy", "checkpoints"))
    assert main([str(survivor)]) == 0
    markdown = (survivor / "report.md").read_text()
    assert "1 runs (1 completed) of 3 planned; swept: reward_funcs." in markdown
    assert ("Planned but not in the folder (2: never started, or the sweep still runs): "
            "job 1: reward_funcs=[verifier,'crashy:reward']; job 2: reward_funcs=[verifier,'nosuch:fn'].") in markdown
