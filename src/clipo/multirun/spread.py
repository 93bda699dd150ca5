"""Bars per configuration of a sweep: the mean over its seeds, their standard deviation, and each run's value."""

from __future__ import annotations

import pandas as pd

from clipo.multirun.tables import choice_columns, seeds_swept, summarize


def run_labels(df: pd.DataFrame) -> list[str]:
    """A short label per run: its job number and the swept choices, e.g. `3: loss=supcon seed=1`."""
    choices = choice_columns(df)
    return [" ".join([f"{row['run']}:", *(f"{c}={row[c]}" for c in choices)]) for _, row in df.iterrows()]


def per_config(df: pd.DataFrame, metrics: list[str]) -> tuple[pd.DataFrame, list[str], pd.DataFrame | None,
                                                               dict[str, list[list[float]]] | None]:
    """(values, labels, errors, points) for the bar figures of `plots`: per run when one seed ran (no errors, no points);
    with seeds swept, per configuration (the swept choices but `seed`): the mean, the std over its runs,
    and each run's value."""
    if not seeds_swept(df):
        return df[metrics].reset_index(drop=True), run_labels(df), None, None
    by = [c for c in choice_columns(df) if c != "seed"]
    summary = summarize(df, by=by, metrics=metrics)
    means = pd.DataFrame({m: summary[f"{m} mean"] for m in metrics})
    stds = pd.DataFrame({m: summary[f"{m} std"] for m in metrics})
    keys = [tuple(row) for row in summary[by].astype(str).itertuples(index=False)]
    run_keys = [tuple(row) for row in df[by].astype(str).itertuples(index=False)]
    points = {m: [[v for k, v in zip(run_keys, df[m]) if k == key and pd.notna(v)] for key in keys] for m in metrics}
    labels = [" ".join(f"{c}={v}" for c, v in zip(by, key)) or "all" for key in keys]
    return means, [f"{label} (n={n})" for label, n in zip(labels, summary["runs"])], stds, points
