"""report.md of a sweep: how its jobs ended (the failed ones with their error line, the ones never started),
the per-run table, and the mean ± std over seeds of the completed runs."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import yaml

from clipo.multirun.status import FINISHED, planned_jobs, swept_keys
from clipo.multirun.tables import (
    choice_columns,
    headline_columns,
    markdown_table,
    mean_std_table,
    seeds_swept,
    summarize,
)

FOOTNOTE = (
    "Final metrics: train/* and contrastive/* are the last RL step's values, val/* the validation after "
    "training (val_before/* before it). gap/<set>_<pk> = acc(set) - acc(perturbed twin): positive means "
    "accuracy lost under perturbation. Plots: heldout_accuracy.png (per configuration: mean over seeds, std bar, "
    "a dot per run), reward_accuracy.png, contrastive.png, robustness_gap.png; they show completed runs only."
)


def _counts(df: pd.DataFrame, planned: list[list[str]] | None) -> str:
    counts = df["status"].value_counts()
    parts = [f"{counts[s]} {s}" for s in [FINISHED, *sorted(set(counts.index) - {FINISHED})] if s in counts]
    line = f"{len(df)} runs ({', '.join(parts)})"
    return line + (f" of {len(planned)} planned" if planned is not None and len(planned) != len(df) else "")


def _unfinished(df: pd.DataFrame, choices: list[str], planned: list[list[str]] | None) -> list[str]:
    """The jobs that did not complete (status and error line), and the planned ones that never started."""
    lines = []
    rows = df[df["status"] != FINISHED]
    if len(rows):
        lines += ["", "## Jobs that did not complete", "", markdown_table(rows[["run", *choices, "status", "error"]]),
                  "", "Each job's full log is its <task_name>.log (train.log for a crash's traceback)."]
    present = {str(r) for r in df["run"]}
    missing = [(job, overrides) for job, overrides in enumerate(planned or []) if str(job) not in present]
    if missing:
        listed = "; ".join(f"job {job}: {' '.join(o for o in overrides if o.split('=')[0] in choices)}"
                           for job, overrides in missing)
        lines += ["", f"Planned but not in the folder ({len(missing)}: never started, or the sweep still runs): "
                  f"{listed}."]
    return lines


def _optuna_best(folder: Path, df: pd.DataFrame) -> list[str]:
    """The best trial of an Optuna search (its optimization_results.yaml), with its job number."""
    path = folder / "optimization_results.yaml"
    results = yaml.safe_load(path.read_text()) if path.is_file() else None
    if not results or "best_params" not in results:
        return []
    params = results["best_params"]

    def same(row: pd.Series) -> bool:
        return all(k in row and _close(row[k], v) for k, v in params.items())

    jobs = [str(row["run"]) for _, row in df.iterrows() if same(row)]
    shown = " ".join(f"{k}={v}" for k, v in params.items())
    return ["", f"Optuna's best trial: job {', '.join(jobs) or '?'} ({shown}), optimized_metric = "
                f"{results.get('best_value')} (optimization_results.yaml)."]


def _close(a: object, b: object) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-9)
    return str(a) == str(b)


def report_markdown(folder: Path, df: pd.DataFrame) -> str:
    planned = planned_jobs(folder)
    choices = [c for c in (swept_keys(planned) if planned else choice_columns(df)) if c in df.columns]
    metrics = headline_columns(df)
    lines = [f"# clipo report: {folder}", "", f"{_counts(df, planned)}; swept: {', '.join(choices) or 'nothing'}."]
    from_csv = df.loc[df["metrics_from"] == "csv", "run"].astype(str).tolist()
    if from_csv:
        lines.append(f"Runs {', '.join(from_csv)} have no summary.json: their metrics are the last values logged in "
                     "csv/metrics.csv (`metrics_from: csv`).")
    lines += _optuna_best(folder, df)
    lines += _unfinished(df, choices, planned)
    lines += ["", "## Runs", "", markdown_table(df[["run", *choices, "status", "metrics_from", *metrics]])]
    completed = df[df["status"] == FINISHED]
    if seeds_swept(completed):
        by = [c for c in choice_columns(completed) if c != "seed"]
        summary = summarize(completed, by=by, metrics=metrics)
        lines += ["", "## Mean ± std over seeds (completed runs)", "", markdown_table(mean_std_table(summary, by, metrics))]
    lines += ["", FOOTNOTE]
    return "\n".join(lines) + "\n"
