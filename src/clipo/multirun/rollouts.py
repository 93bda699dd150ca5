"""Reading a run's `rollouts.jsonl` (written by `clipo.rl.rollout_log`): a frame, per-step summaries,
the highest and lowest samples, and a markdown page of them."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from clipo.multirun.tables import markdown_table
from clipo.rl.rollout_log import flat_row

ROLLOUTS_FILE = "rollouts.jsonl"
SUMMARY_COLUMNS = ["correct", "bonus", "contrastive_loss", "shaped_reward", "advantage", "length", "truncated"]
SAMPLE_COLUMNS = ["step", "index", "group", "correct", "shaped_reward", "advantage", "bonus", "length", "response"]


def load_rollouts(path: str | Path) -> pd.DataFrame:
    """One row per logged rollout, rewards spread into `reward/<name>` columns.

    `path` is a run folder or its rollouts.jsonl. A step logged twice (a run resumed from an
    earlier checkpoint appends again) keeps its latest rows. A half-written last line is skipped.
    """
    path = Path(path)
    path = path / ROLLOUTS_FILE if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; runs write it when logging.rollouts_every_n_steps > 0")
    rows, lines = [], path.read_text().splitlines()
    for number, line in enumerate(lines):
        try:
            rows.append(flat_row(json.loads(line)))
        except json.JSONDecodeError:
            if number != len(lines) - 1:  # only the last line may be cut short (a killed run)
                raise ValueError(f"{path}:{number + 1} is not a JSON object") from None
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    df["write"] = (df["index"] == 0).cumsum()  # one id per write of a step's rows
    latest = df.groupby("step")["write"].transform("max")
    return df[df["write"] == latest].drop(columns="write").reset_index(drop=True)


def reward_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c.startswith("reward/")]


def step_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per step: the rollouts logged, and the mean of each reward, correctness, bonus, shaped
    reward, advantage, length and truncation (a reward's mean over the rollouts it applied to)."""
    columns = reward_columns(df) + [c for c in SUMMARY_COLUMNS if c in df.columns]
    numeric = df[["step", *columns]].astype({c: float for c in columns})
    summary = numeric.groupby("step").mean()
    summary.insert(0, "rollouts", df.groupby("step").size())
    return summary.reset_index()


def extremes(df: pd.DataFrame, by: str = "shaped_reward", k: int = 3) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The `k` rollouts with the highest and the lowest `by` (ties: earlier first)."""
    order = df.sort_values(by, kind="stable", ascending=False)
    columns = [c for c in SAMPLE_COLUMNS if c in df.columns] + [c for c in reward_columns(df) if c not in SAMPLE_COLUMNS]
    return order.head(k)[columns], order.tail(k)[::-1][columns]


def rollouts_markdown(df: pd.DataFrame, title: str, k: int = 3) -> str:
    """Per-step summary table, then the top and bottom samples by shaped reward."""
    lines = [f"# Rollouts: {title}", "", f"{len(df)} rollouts over {df['step'].nunique()} logged steps.", "",
             "## Per step (means)", "", markdown_table(step_summary(df)), ""]
    top, bottom = extremes(df, k=k)
    for name, part in (("Highest", top), ("Lowest", bottom)):
        part = part.assign(response=part["response"].str.slice(0, 300).str.replace("\n", " ⏎ "))  # markdown_table escapes |
        lines += [f"## {name} shaped reward", "", markdown_table(part), ""]
    return "\n".join(lines)
