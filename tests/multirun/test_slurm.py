"""`hydra/launcher=slurm` against a stand-in for SLURM (`fake_slurm/`: sbatch, sacct, scontrol on PATH): the
sbatch script clipo's launcher config makes, each job run with SLURM's environment, and the requeue at the time
limit: SLURM's USR1 warning ends the RL step, last.ckpt is written, Lightning's handler runs `scontrol requeue`,
and the requeued job continues in its own folder from last.ckpt (`ckpt_path=last resume.missing=fresh`).
What a real cluster adds (scheduling, srun's tasks on GPUs, the signal's timing, a requeue on another node) is
not run here."""

from __future__ import annotations

import json
import os
from pathlib import Path

from clipo.report import main
from tests.multirun.sweeps import run_multirun, sweep_folder

FAKE_SLURM = Path(__file__).resolve().parent / "fake_slurm"
# a reward of 0 that, in array task 0's second call (RL step 2), sends the process SLURM's warning signal once
WARNED_AT_STEP_2 = '''
import os, signal
from pathlib import Path


def reward(completions, **kwargs):
    calls_file = Path(os.environ["FAKE_SLURM_OUT"]) / "reward_calls"
    calls = int(calls_file.read_text()) + 1 if calls_file.exists() else 1
    calls_file.write_text(str(calls))
    if calls == 2:
        os.kill(os.getpid(), signal.SIGUSR1)
    return [0.0] * len(completions)
'''


def test_a_slurm_job_warned_before_its_time_limit_is_requeued_and_continues_in_its_folder(tmp_path):
    out = tmp_path / "slurm"
    out.mkdir()
    (tmp_path / "warned.py").write_text(WARNED_AT_STEP_2)
    env = {"PATH": f"{FAKE_SLURM}:{os.environ['PATH']}", "FAKE_SLURM_OUT": str(out)}
    result = run_multirun(tmp_path, "hydra/launcher=slurm", "hydra.launcher.partition=debug",
                          "hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1", "seed=0",
                          "reward_funcs=[verifier,'warned:reward']", "trainer.max_steps=3", "data.val=null",
                          "ckpt_path=last", "resume.missing=fresh", env=env)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    (script,) = [p.read_text() for p in out.glob("submitted_*.sh")]
    for flag in ("--signal=USR1@300", "--requeue", "--partition=debug", "--time=240", "--ntasks-per-node=1",
                 "--nodes=1", "--cpus-per-task=1", "--job-name=train"):
        assert f"#SBATCH {flag}\n" in script, flag
    assert (out / "requeues").read_text().split() == ["4242"]  # Lightning's SLURM handler asked once

    folder = sweep_folder(tmp_path)
    job = folder / "0"
    logs = "".join(p.read_text() for p in folder.glob(".submitit/4242/*_log.*"))
    assert "received SIGUSR1: finishing the current step" in logs and "interrupted by SIGUSR1 after RL step 2" in logs
    assert (job / "hpc_ckpt_1.ckpt").is_file()  # written by Lightning's requeue handler beside last.ckpt
    assert f"Restored all states from the checkpoint at {job / 'checkpoints' / 'last.ckpt'}" in logs
    assert (out / "reward_calls").read_text() == "3"  # steps 1-2, then step 3 only: continued, not restarted
    summary = json.loads((job / "summary.json").read_text())
    assert not summary.get("interrupted") and [row["step"] for row in summary["history"]] == [1, 2, 3]
    steps = [json.loads(line)["step"] for line in (job / "rollouts.jsonl").read_text().splitlines()]
    assert steps == [1] * 4 + [2] * 4 + [3] * 4  # each step's rollouts once
    assert json.loads((job / "job.json").read_text())["status"] == "completed"
    assert main([str(folder)]) == 0 and "1 runs (1 completed)" in (folder / "report.md").read_text()
