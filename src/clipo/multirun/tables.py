"""Tables from `load_runs`: which choices vary, mean and spread across seeds, markdown."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from clipo.multirun.runs import RUN_COLUMNS

# Final metrics shown in report.md (report.csv keeps every column); `val...` and `gap/...` are added.
HEADLINE_METRICS = [
    "train/reward",
    "train/acc",
    "contrastive/loss",
    "contrastive/pos_cos_embed",
    "contrastive/neg_cos_embed",
    "actor/entropy",
    "time/step",
]


def choice_columns(df: pd.DataFrame) -> list[str]:
    """The override columns whose value differs between runs (the swept choices), in override order."""
    keys = df.attrs.get("choices")
    if keys is None:
        raise ValueError("this frame does not come from load_runs (no attrs['choices']); pass by=[...] explicitly")
    return [k for k in keys if k in df.columns and df[k].astype(str).nunique(dropna=False) > 1]


def seeds_swept(df: pd.DataFrame) -> bool:
    return "seed" in df.columns and df["seed"].astype(str).nunique() > 1


def metric_columns(df: pd.DataFrame) -> list[str]:
    """Numeric columns that are metrics (not choices, not run bookkeeping)."""
    skip = set(RUN_COLUMNS) | set(df.attrs.get("choices", []))
    return [c for c in df.columns if c not in skip and pd.api.types.is_numeric_dtype(df[c])]


def headline_columns(df: pd.DataFrame) -> list[str]:
    """The metrics report.md shows: HEADLINE_METRICS present, then validation accuracies and gaps."""
    extra = [sorted(c for c in df.columns if c.startswith(prefix)) for prefix in ("val/", "gap/", "val_before/")]
    return [c for c in HEADLINE_METRICS if c in df.columns] + [c for group in extra for c in group]


def summarize(df: pd.DataFrame, by: Sequence[str] | None = None, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Mean and standard deviation of each metric over the runs that share `by` (e.g. over seeds).

    Args:
        df: a frame from `load_runs`.
        by: grouping columns; default the swept choices except `seed`.
        metrics: metric columns; default every numeric metric.

    Returns:
        One row per configuration: the `by` columns, `runs` (how many were averaged), then
        `<metric> mean` and `<metric> std` (NaN for a single run) for each metric.
    """
    by = [c for c in (choice_columns(df) if by is None else by) if c != "seed"]
    missing = [c for c in by if c not in df.columns]
    if missing:
        raise KeyError(f"summarize: no column {missing} in the runs; choose from {list(df.columns)}")
    metrics = list(metric_columns(df) if metrics is None else metrics)
    keyed = df.assign(_all="all") if not by else df
    groups = keyed.groupby(by or ["_all"], sort=False, dropna=False)
    out = groups.size().rename("runs").to_frame()
    for metric in metrics:
        out[f"{metric} mean"] = groups[metric].mean()
        out[f"{metric} std"] = groups[metric].std(ddof=1)
    out = out.reset_index()
    return out.drop(columns=["_all"]) if not by else out


def _cell(value: object, digits: int) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value).replace("|", "\\|")


def markdown_table(df: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub-flavoured markdown table (floats to `digits` decimals, NaN as blank)."""
    header = "| " + " | ".join(_cell(c, digits) for c in df.columns) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(_cell(v, digits) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def mean_std_table(summary: pd.DataFrame, by: Sequence[str], metrics: Sequence[str], digits: int = 3) -> pd.DataFrame:
    """`summarize` output with each metric as one "mean ± std" text column, for report.md."""
    out = summary[[*by, "runs"]].copy()
    for metric in metrics:
        mean, std = summary[f"{metric} mean"], summary[f"{metric} std"]
        out[metric] = [
            "" if math.isnan(m) else f"{m:.{digits}f}" + ("" if math.isnan(s) else f" ± {s:.{digits}f}")
            for m, s in zip(mean, std)
        ]
    return out
