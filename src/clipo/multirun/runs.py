"""Reading a Hydra multirun folder: one row per run (its choices and final metrics) and per-step histories.

A run folder is what `python src/clipo/train.py -m ...` writes under
`logs/<task_name>/multiruns/<date_time>/<job_num>/`: `.hydra/overrides.yaml` (the run's
command-line choices), `summary.json` (final metrics and per-step history, written when
training ends) and `csv/metrics.csv` (Lightning's CSVLogger, one row per step).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from clipo.evaluation.metrics import robustness_gap
from clipo.multirun.status import job_status

# Columns every row has besides the run's choices and metrics (status and error: `clipo.multirun.status`).
RUN_COLUMNS = ["run", "status", "error", "metrics_from", "path"]
# Validation sets named `<base>_p<k>` are perturbed twins of `<base>` (e.g. arith_p1 of arith).
PERTURBED_SET = re.compile(r"^val/(?P<base>.+)_(?P<level>p\d+)/acc$")


class NoRunsError(FileNotFoundError):
    """The folder holds no run (no `<job>/.hydra/overrides.yaml`)."""


def find_runs(folder: str | Path) -> list[Path]:
    """Run folders of a multirun folder (or the folder itself when it is one run), by job number."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NoRunsError(f"{folder} is not a folder; pass a multirun folder such as logs/train/multiruns/<date_time>")
    if (folder / ".hydra" / "overrides.yaml").is_file():
        return [folder]
    runs = [p.parent.parent for p in folder.glob("*/.hydra/overrides.yaml")]
    nested = sorted(p.parents[2] for p in folder.glob("*/*/.hydra/overrides.yaml"))
    if not runs and nested:
        raise NoRunsError(f"{folder} holds multirun folders, not runs; pass one of them, "
                          f"e.g. the latest: {nested[-1]}")
    if not runs:
        raise NoRunsError(
            f"no runs in {folder}: expected sub-folders <job_num>/.hydra/overrides.yaml as written by "
            "`python src/clipo/train.py -m ...`; pass the folder logs/<task_name>/multiruns/<date_time>"
        )
    return sorted(runs, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))


def parse_overrides(lines: list[str]) -> dict[str, Any]:
    """`["loss=supcon", "+x.y=3", "~z"]` -> `{"loss": "supcon", "x.y": 3}` (values YAML-typed; deletions skipped)."""
    choices: dict[str, Any] = {}
    for line in lines:
        if line.startswith("~") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        key = key.lstrip("+")
        try:
            parsed = yaml.safe_load(value) if value else None
        except yaml.YAMLError:
            parsed = value
        choices[key] = parsed if isinstance(parsed, (str, int, float, bool)) or parsed is None else value
    return choices


def read_csv_metrics(run_dir: Path) -> pd.DataFrame | None:
    """The CSVLogger table of a run, or None when there is none (other logger, or nothing flushed yet)."""
    path = run_dir / "csv" / "metrics.csv"
    if not path.is_file() or path.stat().st_size == 0:
        return None
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return None


def final_metrics(run_dir: Path) -> tuple[dict[str, float], str]:
    """(final metrics, where they came from): `summary` (summary.json), `csv` (last logged value of
    each column, e.g. for a run that crashed before writing summary.json) or `none`."""
    summary = run_dir / "summary.json"
    if summary.is_file():
        return {k: float(v) for k, v in json.loads(summary.read_text())["metrics"].items()}, "summary"
    table = read_csv_metrics(run_dir)
    if table is None:
        return {}, "none"
    last = {c: table[c].dropna() for c in table.columns if c not in ("epoch", "step")}
    return {c: float(v.iloc[-1]) for c, v in last.items() if len(v)}, "csv"


def robustness_gaps(metrics: dict[str, float]) -> dict[str, float]:
    """`gap/<base>_<pk>` = acc(base) - acc(perturbed twin) for every twin pair (positive: accuracy lost)."""
    gaps = {}
    for key, perturbed in metrics.items():
        match = PERTURBED_SET.match(key)
        original = metrics.get(f"val/{match['base']}/acc") if match else None
        if original is not None and math.isfinite(original) and math.isfinite(perturbed):
            gaps[f"gap/{match['base']}_{match['level']}"] = robustness_gap(original, perturbed)
    return gaps


def load_runs(folder: str | Path) -> pd.DataFrame:
    """One row per run: `run` (job folder name), its overrides as columns, `status` and `error` (how the
    job ended; for one that did not complete, its error line or what stopped it), `metrics_from` (`summary`, `csv` or `none`), `path`,
    the final metrics and `gap/...` robustness gaps.

    The override keys are listed in `df.attrs["choices"]`.
    """
    rows, choice_keys = [], []
    for run_dir in find_runs(folder):
        choices = parse_overrides(yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text()) or [])
        choice_keys += [k for k in choices if k not in choice_keys]
        metrics, source = final_metrics(run_dir)
        status, detail = job_status(run_dir)
        rows.append({"run": run_dir.name, **choices, "status": status, "error": detail,
                     "metrics_from": source, "path": str(run_dir),
                     **metrics, **robustness_gaps(metrics)})
    df = pd.DataFrame(rows)
    df.attrs["choices"] = choice_keys
    return df


def load_history(run_dir: str | Path) -> pd.DataFrame:
    """Per-step training metrics of one run (column `step` plus one per metric), validation rows dropped.

    The CSV log is preferred (it exists for crashed runs too); summary.json's history otherwise,
    renumbered 0, 1, ... per RL step as the CSV is (its own `step` is the optimizer step count,
    which stands still during head warm-up).
    """
    run_dir = Path(run_dir)
    table = read_csv_metrics(run_dir)
    if table is not None:
        train_cols = [c for c in table.columns if not c.startswith("val") and c not in ("step", "epoch")]
        return table.dropna(subset=train_cols, how="all").drop(columns=["epoch"], errors="ignore")
    summary = run_dir / "summary.json"
    history = json.loads(summary.read_text()).get("history", []) if summary.is_file() else []
    table = pd.DataFrame(history).drop(columns=["step"], errors="ignore")
    return table.assign(step=range(len(table)))
