"""An Optuna search of two trials through `experiment=search_lambda_tau` with the tiny model: each trial returns
its held-out accuracy to Hydra, a failed trial is told to Optuna as FAIL and the search goes on."""

from __future__ import annotations

import json
import math

import yaml

from clipo.report import main
from tests.multirun.sweeps import SMALL_VAL, run_multirun, sweep_folder


def test_a_search_of_two_trials_optimises_the_heldout_accuracy_and_survives_a_failed_trial(tmp_path):
    # lambda from {0.2, -1}: -1 is refused before the model loads (a negative lambda rewards spreading correct
    # answers). With the preset's sampler seed 0, TPE's first (random) proposals are -1, then 0.2.
    result = run_multirun(tmp_path, "experiment=search_lambda_tau", "hydra.sweeper.n_trials=2",
                          "contrastive.lam=choice(0.2,-1)", *SMALL_VAL)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    folder = sweep_folder(tmp_path, "search_lambda_tau")
    overrides = {job: yaml.safe_load((folder / job / ".hydra" / "overrides.yaml").read_text()) for job in ("0", "1")}
    lam = {job: next(o for o in overrides[job] if o.startswith("contrastive.lam=")) for job in overrides}
    assert lam == {"0": "contrastive.lam=-1", "1": "contrastive.lam=0.2"}, "TPE proposed others: pick another seed"
    assert any(o.startswith("loss.temperature=") for o in overrides["1"])  # the preset's second knob
    assert "Failed experiment: invalid configuration: - contrastive.lam=-1 must be >= 0" in output
    failed, done = (json.loads((folder / job / "job.json").read_text()) for job in ("0", "1"))
    assert failed["status"] == "failed" and done["status"] == "completed"
    metrics = json.loads((folder / "1" / "summary.json").read_text())["metrics"]
    assert math.isclose(done["returned"], metrics["val/arith/acc"])  # optimized_metric=auto: data.val's first set
    best = yaml.safe_load((folder / "optimization_results.yaml").read_text())
    assert best["best_params"]["contrastive.lam"] == 0.2 and math.isclose(best["best_value"], done["returned"])
    assert main([str(folder)]) == 0
    markdown = (folder / "report.md").read_text()
    assert "2 runs (1 completed, 1 failed); swept: contrastive.lam, loss.temperature." in markdown
    assert "Optuna's best trial: job 1 (contrastive.lam=0.2 loss.temperature=" in markdown
