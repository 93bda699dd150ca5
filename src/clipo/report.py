"""The report of an ablation: `python -m clipo.report logs/<task_name>/multiruns/<date_time>`.

Writes, into the multirun folder (or `--out`):
  report.md                 how the jobs ended (the failed ones with their error line, planned jobs that
                            never started), per-run table of swept choices and headline final metrics, and
                            mean ± std per configuration when seeds were swept
  report.csv                every run, its status and error, every final metric (report_by_config.csv: mean/std)
  heldout_accuracy.png      held-out accuracy after training per run; with seeds swept per configuration:
                            the mean, the std as an error bar, a dot per seed
  reward_accuracy.png       train reward and accuracy over RL steps, one line per run
  contrastive.png           contrastive loss, positive/negative cosine similarity over steps
  robustness_gap.png        acc(set) - acc(perturbed twin) per run (per configuration with seeds)
  rollouts.md               for a run with rollouts.jsonl: per-step reward/bonus/advantage means and the
                            highest and lowest samples (rollouts_<run>.md per run of a multirun)

`python -m clipo.report <run>` works on one run folder too, and on any launcher's sweep (basic,
hydra/launcher=parallel or slurm, an Optuna search): each job's folder is <sweep>/<job num>.

A job's status (`clipo.multirun.status`) is completed, crashed, failed, interrupted, running, killed or
no result; the figures and the mean ± std show completed runs only. A run without summary.json is
reported from the last values in its CSV log; the `metrics_from` column says which. The parts live in
`clipo.multirun`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from clipo.multirun.page import report_markdown
from clipo.multirun.plots import (
    CONTRASTIVE_PANELS,
    REWARD_PANELS,
    plot_curves,
    plot_heldout_accuracy,
    plot_robustness_gap,
)
from clipo.multirun.rollouts import ROLLOUTS_FILE, load_rollouts, rollouts_markdown
from clipo.multirun.runs import NoRunsError, load_history, load_runs
from clipo.multirun.spread import per_config, run_labels
from clipo.multirun.status import FINISHED
from clipo.multirun.tables import seeds_swept, summarize

__all__ = ["NoRunsError", "load_runs", "main", "run_labels", "summarize", "write_report"]


def _figures(df: pd.DataFrame) -> dict:
    """The PNG figures, from the completed runs: curves per run, bars per run or per configuration."""
    done = df[df["status"] == FINISHED]
    histories = dict(zip(run_labels(done), (load_history(p) for p in done["path"])))
    accuracy = [c for c in done.columns if c.startswith("val/") and c.endswith("/acc")]
    gaps = [c for c in done.columns if c.startswith("gap/")]
    return {
        "heldout_accuracy.png": plot_heldout_accuracy(*per_config(done, accuracy)),
        "reward_accuracy.png": plot_curves(histories, REWARD_PANELS, "reward and accuracy"),
        "contrastive.png": plot_curves(histories, CONTRASTIVE_PANELS, "contrastive objective"),
        "robustness_gap.png": plot_robustness_gap(*per_config(done, gaps)),
    }


def write_report(folder: str | Path, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Write report.md, report.csv and the PNG plots of a multirun folder; returns name -> path.

    Raises:
        NoRunsError: the folder holds no run.
    """
    folder = Path(folder)
    df = load_runs(folder)  # first: a mistyped folder must not be created by the mkdir below
    out = Path(out_dir) if out_dir is not None else folder
    out.mkdir(parents=True, exist_ok=True)
    files = {"report.md": out / "report.md", "report.csv": out / "report.csv"}
    files["report.md"].write_text(report_markdown(folder, df))
    df.to_csv(files["report.csv"], index=False)
    completed = df[df["status"] == FINISHED]
    if seeds_swept(completed):
        files["report_by_config.csv"] = out / "report_by_config.csv"
        summarize(completed).to_csv(files["report_by_config.csv"], index=False)
    for name, figure in _figures(df).items():
        files[name] = out / name
        figure.savefig(files[name], dpi=110)
    files |= _rollout_pages(df, out)
    return files


def _rollout_pages(df: pd.DataFrame, out: Path) -> dict[str, Path]:
    """rollouts.md (one run) or rollouts_<run>.md (each run of a multirun) for runs that logged rollouts."""
    pages = {}
    for run, path in zip(df["run"], df["path"]):
        rollouts = load_rollouts(path) if (Path(path) / ROLLOUTS_FILE).is_file() else None
        if rollouts is None or rollouts.empty:
            continue
        name = "rollouts.md" if len(df) == 1 else f"rollouts_{run}.md"
        pages[name] = out / name
        pages[name].write_text(rollouts_markdown(rollouts, str(path)))
    return pages


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
    statuses = load_runs(args.folder)["status"]
    unfinished = statuses[statuses != FINISHED].value_counts()
    note = f" ({', '.join(f'{n} {s}' for s, n in unfinished.items())}: listed in report.md)" if len(unfinished) else ""
    print(f"report of {len(statuses)} runs in {args.folder}{note}:")
    for path in files.values():
        print(f"  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
