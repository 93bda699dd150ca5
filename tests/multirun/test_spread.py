"""The held-out accuracy figure of a sweep: per configuration the mean over seeds, the std, each run's value."""

from __future__ import annotations

import json
import math

import pytest

from clipo.multirun.plots import plot_heldout_accuracy
from clipo.multirun.runs import load_runs
from clipo.multirun.spread import per_config
from clipo.report import _figures


def _run(folder, job, overrides, metrics=None, failed=False):
    run = folder / str(job)
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if failed:
        (run / "job.json").write_text(json.dumps({"job": job, "status": "failed", "error": "invalid configuration"}))
    else:
        (run / "summary.json").write_text(json.dumps({"metrics": metrics, "history": [{"step": 1.0, **metrics}]}))


def test_bars_are_the_mean_over_seeds_of_the_completed_runs_with_their_spread(tmp_path):
    job = 0
    for loss, accuracies in {"infonce": [0.1, 0.2, 0.6], "supcon": [0.5, 0.5, 0.5]}.items():
        for seed, acc in enumerate(accuracies):
            _run(tmp_path, job, [f"loss={loss}", f"seed={seed}"], {"val/arith/acc": acc, "val/avg/acc": acc})
            job += 1
    _run(tmp_path, job, ["loss=infonce", "seed=3"], failed=True)  # no metric: drawn nowhere, counted nowhere
    runs = load_runs(tmp_path)
    done = runs[runs["status"] == "completed"]
    values, labels, errors, points = per_config(done, ["val/arith/acc"])
    assert labels == ["loss=infonce (n=3)", "loss=supcon (n=3)"]
    # infonce: mean 0.3, sample std sqrt(((-0.2)^2 + (-0.1)^2 + 0.3^2) / 2) = sqrt(0.07)
    assert values["val/arith/acc"].tolist() == pytest.approx([0.3, 0.5])
    assert math.isclose(errors["val/arith/acc"][0], math.sqrt(0.07)) and errors["val/arith/acc"][1] == 0.0
    assert points["val/arith/acc"] == [[0.1, 0.2, 0.6], [0.5, 0.5, 0.5]]
    figure = _figures(runs)["heldout_accuracy.png"]
    (axis,) = figure.axes  # one panel per set: arith (val/avg/acc is no set)
    assert axis.get_title() == "held-out accuracy: arith"
    heights = [bar.get_height() for bar in axis.patches]
    assert len(heights) == 2 and math.isclose(heights[0], 0.3) and math.isclose(heights[1], 0.5)


def test_one_seed_gives_a_bar_per_run():
    import pandas as pd

    df = pd.DataFrame({"run": ["0", "1"], "loss": ["infonce", "none"], "seed": [0, 0], "val/arith/acc": [0.25, 0.5]})
    df.attrs["choices"] = ["loss", "seed"]
    values, labels, errors, points = per_config(df, ["val/arith/acc"])
    assert labels == ["0: loss=infonce", "1: loss=none"] and errors is None and points is None
    assert [bar.get_height() for bar in plot_heldout_accuracy(values, labels).axes[0].patches] == [0.25, 0.5]
