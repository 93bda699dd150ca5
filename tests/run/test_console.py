"""Output off a terminal: whole progress lines at most one per interval, no carriage returns, no tips."""

import io
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from lightning.pytorch.callbacks import TQDMProgressBar

from clipo.run.console import LineProgressBar, progress_bar
from tests.test_cli import TINY

REPO = Path(__file__).resolve().parents[2]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _trainer(step: int, max_steps: int = 12, num_val_batches=(5,)) -> SimpleNamespace:
    return SimpleNamespace(global_step=step, max_steps=max_steps, progress_bar_metrics={"reward": 0.25}, loggers=[],
                           num_val_batches=list(num_val_batches), datamodule=SimpleNamespace(val_set_names=["arith"]))


def test_training_lines_come_at_most_once_per_interval(monkeypatch):
    clock, stream = Clock(), io.StringIO()
    monkeypatch.setattr("clipo.run.console.time.monotonic", clock)
    bar = LineProgressBar(interval_s=10.0, stream=stream)
    bar.on_train_start(_trainer(0), None)
    for step in range(1, 13):  # a step every 3 s: lines at 12 s, 24 s, 36 s (the last step)
        clock.now = 3.0 * step
        bar.on_train_batch_end(_trainer(step), None)
    lines = stream.getvalue().splitlines()
    assert [re.match(r"\[train\] step (\d+)/12", line).group(1) for line in lines] == ["4", "8", "12"]
    assert lines[0] == "[train] step 4/12 (33%) | 12s elapsed, ~24s left | reward 0.25"
    assert lines[-1] == "[train] step 12/12 (100%) | 36s elapsed | reward 0.25"


def test_validation_lines_come_at_most_once_per_interval(monkeypatch):
    clock, stream = Clock(), io.StringIO()
    monkeypatch.setattr("clipo.run.console.time.monotonic", clock)
    bar = LineProgressBar(interval_s=10.0, stream=stream)
    trainer = _trainer(0, num_val_batches=[5])
    for batch in range(5):  # 6 s a batch: a line at 12 s and 24 s, then the set's end
        bar.on_validation_batch_start(trainer, None, None, batch)
        clock.now = 6.0 * (batch + 1)
        bar.on_validation_batch_end(trainer, None, None, None, batch)
    assert stream.getvalue().splitlines() == [
        "[validate] arith batch 2/5 | 12s elapsed",
        "[validate] arith batch 4/5 | 24s elapsed",
        "[validate] arith done: 5 batches in 30s",
    ]


def test_a_terminal_keeps_tqdm():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert isinstance(progress_bar(stream=Terminal()), TQDMProgressBar)
    assert isinstance(progress_bar(stream=io.StringIO()), LineProgressBar)


def test_a_run_piped_to_a_file_reads_as_lines(tmp_path):
    """`python src/clipo/train.py > log` : no '\\r' (tqdm frames) anywhere, no Lightning tips, the
    run's first lines say what precision and threads it uses, and with a long interval only the end
    of each loop is reported (validation twice, before and after training)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HYDRA_FULL_ERROR": "0"}
    command = [sys.executable, str(REPO / "src" / "clipo" / "train.py"), *TINY, "trainer.max_steps=2",
               "data=arith", "data.val.arith.size=4", "data.val.arith_p1.size=4", "data.val_batch_size=2",
               "callbacks.progress_bar.interval_s=1e9", f"paths.root_dir={tmp_path}"]
    command.remove("data.val=null")
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "\r" not in output
    assert "Tip" not in output and "litlogger" not in output and "litmodels" not in output
    first = result.stdout.splitlines()[:3]
    assert "precision 32: trainer.precision=32 was set explicitly" in first[0]
    assert "precision per phase: sampling float32 (hf from the policy's own weights), training float32" in first[1]
    assert re.search(r"torch threads \d+ \(.+\); tokenizers parallelism off", first[2])
    progress = [line for line in result.stdout.splitlines() if line.startswith(("[train]", "[validate]"))]
    done = ["[validate] arith done: 2 batches", "[validate] arith_p1 done: 2 batches"]
    assert [line.split(" in ")[0].split(" |")[0] for line in progress] == [*done, "[train] step 2/2 (100%)", *done]


def test_vllm_logs_errors_only_unless_the_user_says_otherwise(monkeypatch):
    import logging

    from clipo.run.console import quiet_third_party_output

    monkeypatch.delenv("VLLM_LOGGING_LEVEL", raising=False)
    monkeypatch.setattr(logging.getLogger("vllm"), "level", logging.NOTSET)
    quiet_third_party_output()
    assert os.environ["VLLM_LOGGING_LEVEL"] == "ERROR" and logging.getLogger("vllm").level == logging.ERROR
    monkeypatch.setenv("VLLM_LOGGING_LEVEL", "info")
    quiet_third_party_output()
    assert os.environ["VLLM_LOGGING_LEVEL"] == "info" and logging.getLogger("vllm").level == logging.INFO
