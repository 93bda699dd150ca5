"""A resumed run continues its logs: what the checkpoint's steps logged stays, what came after it goes.

A run stopped (or killed) at RL step 15 with its last checkpoint at step 10 has logged steps 11-15,
which the resumed run logs again. Before the resumed fit starts, for a checkpoint holding `G` RL steps:

- `csv/metrics.csv` (Lightning's CSVLogger would delete it): rows of RL steps <= G are kept, later
  ones dropped. Lightning numbers a training row with the RL steps done before it (step 1 logs 0) and
  a validation row with those done after it, so a row at `step < G` stays, and one at `step == G`
  stays when it holds only validation metrics.
- `rollouts.jsonl`: rows whose `step` (RL steps done, this one included) is <= G stay.
- TensorBoard: the writer starts with `purge_step=G`, which hides the earlier events from step G on.
- W&B: the run id saved in the checkpoint (`RunSummary`) is resumed (`resume="allow"`).

The summary's per-step history is in the checkpoint (`RunSummary`) and continues from it.
"""

from __future__ import annotations

import csv
import json
import os
import warnings
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger

NOT_METRICS = ("epoch", "step")


def _is_validation_row(row: dict[str, str]) -> bool:
    return all(not value for key, value in row.items() if key not in NOT_METRICS and not key.startswith("val/"))


def kept_csv_rows(rows: list[dict[str, str]], step: int) -> list[dict[str, str]]:
    """The rows of a Lightning metrics.csv that belong to RL steps 1..`step`."""
    kept = []
    for row in rows:
        logged = int(float(row.get("step") or 0))
        if logged < step or (logged == step and _is_validation_row(row)):
            kept.append(row)
    return kept


def _replace(path: Path, write: Any) -> None:
    """Write through a temporary file and a rename, so a crash leaves the old file or the new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as file:
        write(file)
    os.replace(tmp, path)


def continue_csv(logger: CSVLogger, step: int) -> None:
    """Keep metrics.csv's rows of RL steps <= `step` and let the logger append after them."""
    path = Path(logger.log_dir) / "metrics.csv"
    if not path.is_file():
        return
    with open(path, newline="") as file:
        reader = csv.DictReader(file)
        header, rows = list(reader.fieldnames or []), kept_csv_rows(list(reader), step)
    with warnings.catch_warnings():  # "Previous log files ... will be deleted": they are rewritten below
        warnings.filterwarnings("ignore", message="Experiment logs directory")
        writer = logger.experiment  # created now: Lightning's writer deletes the old file here
    writer.metrics_keys = sorted(header)  # the header it rewrites when a new key appears

    def write(file: Any) -> None:
        out = csv.DictWriter(file, fieldnames=writer.metrics_keys)
        out.writeheader()
        out.writerows(rows)

    _replace(path, write)


def continue_rollouts(path: Path, step: int) -> None:
    """Keep the rows of rollouts.jsonl whose RL step is <= `step`."""
    if not path.is_file():
        return
    with open(path) as file:
        lines = [line for line in file if line.strip() and json.loads(line).get("step", 0) <= step]
    _replace(path, lambda file: file.writelines(lines))


def continue_logs(loggers: list[Any], rollouts: Path | None, step: int, wandb_id: str | None = None) -> None:
    """Before a resumed fit from a checkpoint of `step` RL steps: every log continues from that step.
    Call on global rank zero only, before the loggers have written anything."""
    for logger in loggers:
        if isinstance(logger, CSVLogger):
            continue_csv(logger, step)
        elif isinstance(logger, TensorBoardLogger):
            logger._kwargs["purge_step"] = step  # SummaryWriter's own way to drop the replaced steps
        elif isinstance(logger, WandbLogger) and wandb_id and logger._experiment is None:
            logger._wandb_init.update(id=wandb_id, resume="allow")
            logger._id = wandb_id
    if rollouts is not None:
        continue_rollouts(rollouts, step)
