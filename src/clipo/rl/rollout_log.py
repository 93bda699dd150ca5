"""Rollouts a researcher can read: rows in `<run dir>/rollouts.jsonl`, a W&B Table, TensorBoard
text, an MLflow table artifact.

Every `logging.rollouts_every_n_steps` RL steps (0: never) the step's first
`logging.rollouts_max_rows_per_step` rollouts (whole groups first, in batch order) become one
JSON object each: step, index, group, prompt, response, ground truth, each reward function's score
(None where it did not apply), verifier correctness, contrastive loss and bonus (None when the
step computed none), shaped reward, advantage, length, truncated, and any `log_extra` column of
a reward function. `clipo.multirun.rollouts` reads the file back; `python -m clipo.report <run>`
summarises it. Under data parallelism rank 0 writes its own rollouts.

Shapes: `N` rollouts of the step.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import torch

from clipo.rl.rewards import RewardScores
from clipo.rollout import RolloutBatch

TEXT_CHARS = 400  # response characters shown in a TensorBoard cell


def _float_or_none(value: float) -> float | None:
    return None if math.isnan(value) else value


def rollout_rows(
    step: int,
    rollouts: RolloutBatch,
    scores: RewardScores,
    shaped: torch.Tensor,
    advantages: torch.Tensor,
    contrastive_loss: torch.Tensor | None = None,
    bonus: torch.Tensor | None = None,
    max_rows: int | None = None,
) -> list[dict[str, Any]]:
    """One dict per rollout (the first `max_rows`), JSON-ready.

    Args:
        step: the RL step the rollouts belong to (as logged with the step's metrics).
        rollouts, scores: the step's N rollouts and their reward scores, in the same order.
        shaped: [N] reward after shaping (weighted sum, overlong penalty, CLIPO bonus).
        advantages: [N] advantages.
        contrastive_loss, bonus: [N] CLIPO's per-rollout loss L_i and reward bonus, or None.
    """
    n = len(rollouts.responses)
    keep = n if max_rows is None else min(n, max_rows)
    columns = {
        "group": rollouts.groups, "correct": scores.correct, "shaped_reward": shaped, "advantage": advantages,
        "length": rollouts.response_lengths, "truncated": rollouts.truncated, "contrastive_loss": contrastive_loss,
        "bonus": bonus,
    }
    # one transfer per column, not one per value
    lists = {k: None if v is None else v[:keep].detach().cpu().tolist() for k, v in columns.items()}
    score_rows = scores.scores[:keep].tolist()
    rows = []
    for i in range(keep):
        row = {
            "step": step,
            "index": i,  # rollout in the step (0 starts a step's rows: a repeated step after a resume)
            "group": lists["group"][i],
            "prompt": scores.prompts[i],
            "response": rollouts.responses[i],
            "ground_truth": rollouts.ground_truths[i],
            "rewards": {name: _float_or_none(v) for name, v in zip(scores.names, score_rows[i])},
            **{k: None if lists[k] is None else lists[k][i] for k in (
                "correct", "contrastive_loss", "bonus", "shaped_reward", "advantage", "length", "truncated")},
        }
        row |= {f"extra/{k}": v[i] for k, v in scores.extra.items()}
        rows.append(row)
    return rows


class RolloutLog:
    """Appends rollout rows to a JSONL file and hands them to the run's W&B / TensorBoard loggers.

    Args:
        path: the JSONL file (appended to, so a resumed run continues it), or None for no file.
        every_n_steps: log steps whose number is a multiple of this; 0 turns logging off.
        max_rows_per_step: at most this many rollouts of a step.
    """

    def __init__(self, path: str | Path | None, every_n_steps: int = 1, max_rows_per_step: int = 64) -> None:
        if every_n_steps < 0 or max_rows_per_step < 1:
            raise ValueError(f"logging.rollouts_every_n_steps must be >= 0 (0: off) and rollouts_max_rows_per_step >= 1, "
                             f"got {every_n_steps} and {max_rows_per_step}")
        self.path = None if path is None else Path(path)
        self.every_n_steps, self.max_rows_per_step = every_n_steps, max_rows_per_step

    def due(self, step: int) -> bool:
        return self.every_n_steps > 0 and step % self.every_n_steps == 0

    def write(self, rows: list[dict[str, Any]], loggers: Sequence[Any] = (), step: int = 1) -> None:
        """Append the rows of RL step `step` (counted from 1, as in the rows) and hand them to the loggers
        at the step their metrics are logged at: Lightning numbers RL step `step` with the steps done before
        it, `step - 1`, so TensorBoard's purge on resume drops or keeps a step's table with its scalars."""
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as file:
                file.writelines(json.dumps(row) + "\n" for row in rows)
        publish(loggers, rows, step - 1)


def flat_row(row: dict[str, Any]) -> dict[str, Any]:
    """A row with its reward dict spread into `reward/<name>` columns (for tables)."""
    flat = {k: v for k, v in row.items() if k != "rewards"}
    flat |= {f"reward/{name}": v for name, v in row.get("rewards", {}).items()}
    return flat


def markdown_rows(rows: list[dict[str, Any]], text_chars: int = TEXT_CHARS) -> str:
    """A markdown table of rows (texts shortened, `|` and newlines escaped), as TensorBoard shows it."""
    flat = [flat_row(r) for r in rows]
    columns = [c for c in (flat[0] if flat else {}) if c != "prompt"]

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3f}"
        text = str(value)
        text = text if len(text) <= text_chars else text[:text_chars] + "…"
        return text.replace("|", "\\|").replace("\n", "⏎")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r[c]) for c in columns) + " |" for r in flat]
    return "\n".join(lines)


def publish(loggers: Sequence[Any], rows: list[dict[str, Any]], step: int) -> None:
    """A W&B Table for a `WandbLogger`, a text summary for a `TensorBoardLogger`, rows appended to the
    run's `rollouts.json` table artifact for an `MLFlowLogger`; other loggers get nothing. Only the
    logger classes are imported here (Lightning imports wandb and mlflow itself, when used)."""
    if not rows:
        return
    from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger, WandbLogger

    for logger in loggers:
        if isinstance(logger, WandbLogger):
            flat = [flat_row(r) for r in rows]
            columns = list(flat[0])
            logger.log_table(key="rollouts", columns=columns, data=[[r.get(c) for c in columns] for r in flat], step=step)
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_text("rollouts", markdown_rows(rows), global_step=step)
        elif isinstance(logger, MLFlowLogger):
            flat = [flat_row(r) for r in rows]
            columns = {c: [r.get(c) for r in flat] for c in dict.fromkeys(c for r in flat for c in r)}
            logger.experiment.log_table(logger.run_id, data=columns, artifact_file="rollouts.json")
