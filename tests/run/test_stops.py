"""A stop keeps every completed step's row exactly once, and what it says fits what exists. The signal comes from
inside the run (the verifier signals its own process), so it lands in a known step without any timing.
(Stops by real outside signals, and their exact resume, are in tests/run/test_checkpointing.py; several
processes and DeepSpeed folders in tests/run/test_rank_failures.py.)"""

from __future__ import annotations

import csv
import json
import logging
import os
import signal

import pytest
import torch

from clipo.registry import VERIFIERS
from clipo.train import train
from tests.conftest import ParityVerifier
from tests.conftest import tiny_parity_config as _config


class SignallingParity(ParityVerifier):
    """`ParityVerifier` that sends this process SIGTERM during its `at`-th call (None: never)."""

    at: int | None = None
    calls = 0

    def __init__(self, **options) -> None:
        pass

    def __call__(self, responses, ground_truths):
        SignallingParity.calls += 1
        if SignallingParity.calls == self.at:
            os.kill(os.getpid(), signal.SIGTERM)
        return super().__call__(responses, ground_truths)


@pytest.fixture
def signalling(monkeypatch):
    monkeypatch.setitem(VERIFIERS._entries, "parity", SignallingParity)
    SignallingParity.calls = 0
    return SignallingParity


def _rows(run) -> list[str]:
    with open(run / "csv" / "metrics.csv") as file:
        return [row["step"] for row in csv.DictReader(file) if row.get("train/reward")]


RUN = ["trainer.max_steps=6", "data.val=null", "callbacks.model_checkpoint.every_n_train_steps=100",
       "logging.rollouts_max_rows_per_step=4"]


def test_a_stop_keeps_the_interrupted_steps_row_and_the_resume_adds_each_step_once(signalling, tmp_path):
    """SIGTERM during RL step 3: the step ends, is saved and its row logged; the resumed run in the same folder
    logs steps 4-6 after it. Before: metrics.csv had steps [0, 1, 3, 4, 5] (the stopped step's row lost)."""
    run = tmp_path / "run"
    signalling.at = 3
    with pytest.raises(SystemExit) as stop:
        train(_config(run, *RUN))
    assert stop.value.code == 128 + signal.SIGTERM
    assert _rows(run) == ["0", "1", "2"]  # Lightning numbers a step's row with the steps before it
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3
    summary = json.loads((run / "summary.json").read_text())
    assert summary["interrupted"] and summary["signal"] == "SIGTERM" and len(summary["history"]) == 3

    signalling.at = None
    train(_config(run, *RUN, "ckpt_path=last"))
    assert _rows(run) == ["0", "1", "2", "3", "4", "5"]
    steps = [json.loads(line)["step"] for line in (run / "rollouts.jsonl").read_text().splitlines()]
    assert steps == [step for step in range(1, 7) for _ in range(4)]
    assert [row["step"] for row in json.loads((run / "summary.json").read_text())["history"]] == [1, 2, 3, 4, 5, 6]


def test_a_stop_during_the_first_validation_keeps_nothing_and_says_so(signalling, tmp_path, caplog):
    # before: "interrupted by SIGTERM at step 0; continue with ckpt_path=" (empty)
    signalling.at = 1  # the first scoring is the validation before training
    val = ["validation.before_training=true", "data.val.arith.verifier=parity", "data.val.arith_p1.verifier=parity"]
    with caplog.at_level(logging.WARNING), pytest.raises(SystemExit) as stop:
        train(_config(tmp_path, "trainer.max_steps=2", *val))
    assert stop.value.code == 128 + signal.SIGTERM
    assert not (tmp_path / "checkpoints").exists()
    line = caplog.records[-1].getMessage()
    assert line == "interrupted by SIGTERM before any RL step was completed: nothing to keep; start the run again"
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["interrupted"] and summary["checkpoint"] is None and summary["history"] == []


def test_a_stop_does_not_wait_for_the_validation_lightning_would_start(signalling, tmp_path):
    """Lightning validates when a fit is asked to stop (`should_stop`); a stop signal ends the run instead, with
    the stopped step saved and logged and no validation row."""
    signalling.at = 2
    val = ["data.val.arith.verifier=parity", "data.val.arith_p1.verifier=parity"]
    with pytest.raises(SystemExit) as stop:
        train(_config(tmp_path, "trainer.max_steps=4", "callbacks.model_checkpoint.every_n_train_steps=100", *val))
    assert stop.value.code == 128 + signal.SIGTERM and signalling.calls == 2  # nothing scored after the stop
    assert _rows(tmp_path) == ["0", "1"]
    with open(tmp_path / "csv" / "metrics.csv") as file:
        assert not any(row.get("val/arith/acc") for row in csv.DictReader(file))
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
