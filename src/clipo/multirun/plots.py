"""Report figures. They are built with `matplotlib.figure.Figure` (no pyplot, no global backend
switch), so they save as PNG anywhere (Agg) and display in notebooks without touching the
notebook's backend.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

# (metric, title) pairs per figure; a metric may be a (solid, dashed) pair drawn on one axis.
REWARD_PANELS = [("train/reward", "reward (train)"), ("train/acc", "accuracy (train)")]
CONTRASTIVE_PANELS = [
    ("contrastive/loss", "contrastive loss"),
    (("contrastive/pos_cos_embed", "contrastive/neg_cos_embed"), "embedding cos: — pos, - - neg"),
    (("contrastive/pos_cos_hidden", "contrastive/neg_cos_hidden"), "hidden cos: — pos, - - neg"),
]


def plot_curves(histories: Mapping[str, pd.DataFrame], panels: Sequence[tuple], title: str = "") -> Figure:
    """One panel per metric, one line per run (same colour for a run across panels).

    Args:
        histories: run label -> `load_history` frame (column `step` plus metrics).
        panels: (metric, title) or ((solid_metric, dashed_metric), title) per panel.
    """
    fig = Figure(figsize=(4.2 * len(panels), 3.4), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    colors = [f"C{i % 10}" for i in range(len(histories))]
    for ax, (metrics, panel_title) in zip(axes, panels):
        metrics = (metrics,) if isinstance(metrics, str) else metrics
        drawn = False
        for color, (label, history) in zip(colors, histories.items()):
            for metric, style in zip(metrics, ("-", "--")):
                if metric in history.columns and history[metric].notna().any():
                    rows = history[["step", metric]].dropna()
                    ax.plot(rows["step"], rows[metric], style, marker=".", color=color,
                            label=label if style == "-" else None)
                    drawn = True
        if not drawn:
            ax.text(0.5, 0.5, "not logged by these runs", ha="center", va="center", transform=ax.transAxes)
        ax.set(title=panel_title, xlabel="RL step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if not handles:  # the first panel may be empty (e.g. loss=none everywhere); take any legend
        handles, labels = next((a.get_legend_handles_labels() for a in axes if a.get_legend_handles_labels()[0]),
                               ([], []))
    if handles:
        fig.legend(handles, labels, loc="outside right upper", fontsize="small")
    if title:
        fig.suptitle(title)
    return fig


def draw_bars(ax, labels: Sequence[str], values: Sequence[float], errors: Sequence[float] | None = None,
              points: Sequence[Sequence[float]] | None = None) -> None:
    """A bar per entry on `ax` (NaN bars marked n/a, negative ones red), optional error bars (e.g. std)
    and optional dots per bar (e.g. the single runs behind a mean)."""
    heights = [0.0 if pd.isna(v) else float(v) for v in values]
    yerr = None if errors is None else [0.0 if pd.isna(e) else float(e) for e in errors]
    ax.bar(range(len(labels)), heights, yerr=yerr, color=["C0" if h >= 0 else "C3" for h in heights],
           alpha=0.8, capsize=3)
    for i, dots in enumerate(points or []):
        ax.plot([i] * len(dots), dots, "k.", alpha=0.7)
    for i, value in enumerate(values):
        if pd.isna(value):
            ax.text(i, 0, "n/a", ha="center", va="bottom", fontsize="small")
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize="small")
    ax.grid(axis="y", alpha=0.3)


def plot_bar_panels(df: pd.DataFrame, labels: Sequence[str], panels: Sequence[tuple[str, str, str]],
                    errors: pd.DataFrame | None = None, points: Mapping[str, Sequence[Sequence[float]]] | None = None,
                    empty: str = "nothing to draw") -> Figure:
    """One bar panel per metric: a bar per row of `df` (a run, or a configuration's mean).

    Args:
        df: rows to draw, one column per panel's metric.
        labels: one bar label per row.
        panels: (metric column, title, y label) per panel.
        errors: optional error bar heights with the same columns (e.g. the std over seeds).
        points: optional metric -> per bar, the values of the single runs (drawn as dots).
        empty: the text drawn when there is no panel.
    """
    fig = Figure(figsize=(max(4.5, 0.6 * len(labels) + 2.5) * max(1, len(panels)), 3.8), layout="constrained")
    axes = fig.subplots(1, max(1, len(panels)), squeeze=False)[0]
    if not panels:
        axes[0].text(0.5, 0.5, empty, ha="center", va="center")
        axes[0].set_axis_off()
        return fig
    for ax, (metric, title, ylabel) in zip(axes, panels):
        draw_bars(ax, labels, df[metric].tolist(), None if errors is None else errors[metric].tolist(),
                  None if points is None else points[metric])
        ax.set(title=title, ylabel=ylabel)
    return fig


def plot_robustness_gap(df: pd.DataFrame, labels: Sequence[str], errors: pd.DataFrame | None = None,
                        points: Mapping[str, Sequence[Sequence[float]]] | None = None) -> Figure:
    """Robustness gap `acc(set) - acc(perturbed twin)` per run (or per configuration), one panel per pair
    (`gap/<set>_<pk>` columns of `load_runs`, or their means; see `plot_bar_panels`)."""
    panels = []
    for gap in (c for c in df.columns if c.startswith("gap/")):
        twin = gap.removeprefix("gap/")
        base, level = twin.rsplit("_", 1)
        panels.append((gap, f"robustness gap: {base} vs {twin}", f"acc({base}) - acc({twin})\n>0: lost under {level}"))
    return plot_bar_panels(df, labels, panels, errors, points, empty="no perturbed validation set (val/<set>_p<k>/acc)")


def plot_heldout_accuracy(df: pd.DataFrame, labels: Sequence[str], errors: pd.DataFrame | None = None,
                          points: Mapping[str, Sequence[Sequence[float]]] | None = None) -> Figure:
    """Held-out accuracy after training (`val/<set>/acc` columns) per run or configuration, a panel per set."""
    sets = [c for c in df.columns if c.startswith("val/") and c.endswith("/acc") and c.count("/") == 2
            and c != "val/avg/acc"]
    panels = [(c, f"held-out accuracy: {c.split('/')[1]}", "accuracy after training") for c in sets]
    return plot_bar_panels(df, labels, panels, errors, points, empty="no validation set (data.val) in these runs")
