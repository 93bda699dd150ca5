"""Two CPU processes under DeepSpeed ZeRO-2, launched as a user does (`python src/clipo/train.py` with
trainer.devices=2): a stop that reaches only rank 0 keeps every completed step's row, the resume from the
strategy's checkpoint folder continues every log once, and when rank 1 then fails, every rank's console and
summary.json name rank 1 and its own error. Before: the folder resume rewrote metrics.csv from the resumed
step and logged rollouts twice, and rank 0 blamed gloo's "Connection closed by peer"."""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY_OVERRIDES, fresh_shell_env

pytestmark = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                reason="deepspeed is not installed (scripts/setup.sh --dev installs it)")
REPO = Path(__file__).resolve().parents[2]
RUN = [*TINY_OVERRIDES, "data.val=null", "trainer.max_steps=6", "trainer.devices=2", "trainer.accelerator=cpu",
       "strategy=deepspeed_zero2", "strategy.process_group_backend=gloo", "verifier=gsm8k",
       "reward_funcs=[verifier,fault_rewards:faulty]", "reward_weights=[1.0,0.0]",
       "callbacks.model_checkpoint.every_n_train_steps=100", "logging.rollouts_max_rows_per_step=4"]


def _launch(run: Path, fault: str, *overrides: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(REPO / "src" / "clipo" / "train.py"), *RUN, f"hydra.run.dir={run}", *overrides]
    env = fresh_shell_env(CLIPO_TEST_FAULT=fault)
    env["PYTHONPATH"] = f"{Path(__file__).parent}:{env.get('PYTHONPATH', '')}"  # fault_rewards, on every rank
    return subprocess.run(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600,
                          env=env)  # every rank's console in one stream, as a terminal shows it


def _csv_steps(run: Path) -> list[str]:
    with open(run / "csv" / "metrics.csv") as file:
        return [row["step"] for row in csv.DictReader(file) if row.get("train/reward")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess, subprocess.CompletedProcess]:
    run = tmp_path_factory.mktemp("zero2")
    stopped = _launch(run, "0:3:sigterm")  # rank 0's third reward call: RL step 3
    after_stop = {"csv": _csv_steps(run), "summary": json.loads((run / "summary.json").read_text())}
    failed = _launch(run, "1:2:raise", "ckpt_path=last")  # rank 1's second call after the resume: RL step 5
    return run, stopped, after_stop, failed


def test_a_stop_heard_by_one_rank_keeps_the_stopped_steps_row(runs):
    run, stopped, after_stop, _ = runs
    assert stopped.returncode == 143, stopped.stdout[-4000:]
    assert after_stop["csv"] == ["0", "1", "2"]  # RL steps 1-3, the stopped one included
    assert after_stop["summary"]["interrupted"] and len(after_stop["summary"]["history"]) == 3
    assert "interrupted by SIGTERM after RL step 3" in stopped.stdout


def test_the_resume_from_the_folder_continues_every_log_once(runs):
    run, _, _, failed = runs
    assert (run / "checkpoints" / "last.ckpt").is_dir()  # DeepSpeed's own checkpoint folder
    assert _csv_steps(run) == ["0", "1", "2", "3"]  # steps 1-3 kept, step 4 added, failed step 5 absent
    steps = [json.loads(line)["step"] for line in (run / "rollouts.jsonl").read_text().splitlines()]
    assert steps == [step for step in (1, 2, 3, 4) for _ in range(4)]


def test_every_rank_reports_the_failed_rank_and_its_own_error(runs):
    run, _, _, failed = runs
    assert failed.returncode == 1
    summary = json.loads((run / "summary.json").read_text())
    assert summary["crashed"] and summary["failed_rank"] == 1 and summary["step"] == 4
    assert summary["error"].startswith("rank 1 (RL step 5: reward faulty): RewardFunctionError: reward function "
                                       "'faulty' raised ValueError: reward exploded on rank 1")
    assert summary["what_to_do"].startswith("fix rank 1's error")
    lines = [line for line in failed.stdout.splitlines() if "training failed on" in line]
    assert len(lines) == 2, failed.stdout[-4000:]  # rank 1's own line and rank 0's
    assert all("training failed on rank 1 (RL step 5: reward faulty): RewardFunctionError" in line for line in lines)
    assert any("rank 0 stopped with it (its collective in RL step 5" in line for line in lines)
    assert "Connection closed by peer" not in "".join(lines) and "Traceback" not in failed.stdout
