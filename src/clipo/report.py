"""The report of an ablation: `python -m clipo.report logs/<task_name>/multiruns/<date_time>`.

Writes, into the multirun folder (or `--out`):
  report.md                 per-run table of swept choices and headline final metrics, and
                            mean ± std per configuration when seeds were swept
  report.csv                every run, every final metric (report_by_config.csv: mean/std)
  reward_accuracy.png       train reward and accuracy over RL steps, one line per run
  contrastive.png           contrastive loss, positive/negative cosine similarity over steps
  robustness_gap.png        acc(set) - acc(perturbed twin) per run (per configuration with seeds)

A run without summary.json (it crashed, or still runs) is reported from the last values in
its CSV log; the `metrics_from` column says which. The parts live in `clipo.multirun`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from clipo.multirun.plots import CONTRASTIVE_PANELS, REWARD_PANELS, plot_curves, plot_robustness_gap
from clipo.multirun.runs import NoRunsError, find_runs, load_history, load_runs
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
    "accuracy lost under perturbation. Plots: reward_accuracy.png, contrastive.png, robustness_gap.png."
)
__all__ = ["NoRunsError", "load_runs", "main", "run_labels", "summarize", "write_report"]


def run_labels(df: pd.DataFrame) -> list[str]:
    """A short label per run: its job number and the swept choices, e.g. `3: loss=supcon seed=1`."""
    choices = choice_columns(df)
    return [" ".join([f"{row['run']}:", *(f"{c}={row[c]}" for c in choices)]) for _, row in df.iterrows()]


def _markdown(folder: Path, df: pd.DataFrame) -> str:
    choices, metrics = choice_columns(df), headline_columns(df)
    lines = [f"# clipo report: {folder}", "", f"{len(df)} runs; swept: {', '.join(choices) or 'nothing'}."]
    from_csv = df.loc[df["metrics_from"] == "csv", "run"].astype(str).tolist()
    empty = df.loc[df["metrics_from"] == "none", "run"].astype(str).tolist()
    if from_csv:
        lines.append(f"Runs {', '.join(from_csv)} have no summary.json (crashed or still running): their metrics "
                     "are the last values logged in csv/metrics.csv (`metrics_from: csv`).")
    if empty:
        lines.append(f"Runs {', '.join(empty)} have neither summary.json nor a CSV log (crashed before logging, "
                     "see their <task_name>.log): no metrics (`metrics_from: none`).")
    lines += ["", "## Runs", "", markdown_table(df[["run", *choices, "metrics_from", *metrics]])]
    if seeds_swept(df):
        by = [c for c in choices if c != "seed"]
        summary = summarize(df, by=by, metrics=metrics)
        lines += ["", "## Mean ± std over seeds", "", markdown_table(mean_std_table(summary, by, metrics))]
    lines += ["", FOOTNOTE]
    return "\n".join(lines) + "\n"


def _gap_figure(df: pd.DataFrame):
    """A bar per run; with seeds swept, a bar per configuration (mean, std error bar, a dot per run)."""
    if not seeds_swept(df):
        return plot_robustness_gap(df, run_labels(df))
    by = [c for c in choice_columns(df) if c != "seed"]
    gaps = [c for c in df.columns if c.startswith("gap/")]
    summary = summarize(df, by=by, metrics=gaps)
    means = pd.DataFrame({g: summary[f"{g} mean"] for g in gaps})
    stds = pd.DataFrame({g: summary[f"{g} std"] for g in gaps})
    keys = [tuple(row) for row in summary[by].astype(str).itertuples(index=False)]
    run_keys = [tuple(row) for row in df[by].astype(str).itertuples(index=False)]
    points = {g: [[v for k, v in zip(run_keys, df[g]) if k == key] for key in keys] for g in gaps}
    labels = [" ".join(f"{c}={v}" for c, v in zip(by, key)) or "all" for key in keys]
    labels = [f"{label} (n={n})" for label, n in zip(labels, summary["runs"])]
    return plot_robustness_gap(means, labels, errors=stds, points=points)


def write_report(folder: str | Path, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Write report.md, report.csv and the PNG plots of a multirun folder; returns name -> path.

    Raises:
        NoRunsError: the folder holds no run.
    """
    folder = Path(folder)
    df = load_runs(folder)  # first: a mistyped folder must not be created by the mkdir below
    out = Path(out_dir) if out_dir is not None else folder
    out.mkdir(parents=True, exist_ok=True)
    histories = dict(zip(run_labels(df), (load_history(p) for p in df["path"])))
    files = {"report.md": out / "report.md", "report.csv": out / "report.csv"}
    files["report.md"].write_text(_markdown(folder, df))
    df.to_csv(files["report.csv"], index=False)
    if seeds_swept(df):
        files["report_by_config.csv"] = out / "report_by_config.csv"
        summarize(df).to_csv(files["report_by_config.csv"], index=False)
    figures = {
        "reward_accuracy.png": plot_curves(histories, REWARD_PANELS, "reward and accuracy"),
        "contrastive.png": plot_curves(histories, CONTRASTIVE_PANELS, "contrastive objective"),
        "robustness_gap.png": _gap_figure(df),
    }
    for name, figure in figures.items():
        files[name] = out / name
        figure.savefig(files[name], dpi=110)
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clipo.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="a multirun folder, e.g. logs/ablate_loss/multiruns/<date_time>")
    parser.add_argument("--out", default=None, help="where to write (default: the folder itself)")
    args = parser.parse_args(argv)
    try:
        files = write_report(args.folder, args.out)
    except NoRunsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    runs = len(find_runs(args.folder))
    print(f"report of {runs} runs in {args.folder}:")
    for path in files.values():
        print(f"  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
