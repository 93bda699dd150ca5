"""`logger=mlflow` for real (a local file store in the run folder): metrics, the config as params,
the rollout rows as a table artifact; and the config reaches the other loggers as hyperparameters."""

from __future__ import annotations

import json

import pytest
import yaml

from clipo.train import train
from tests.conftest import tiny_parity_config as _config


def test_mlflow_gets_metrics_params_and_the_rollout_table(parity_verifier, tmp_path):
    import mlflow  # the dev extra installs mlflow-skinny
    run_dir = tmp_path / "run"
    cfg = _config(run_dir, "logger=mlflow", "data.val=null", "trainer.max_steps=2")
    _, objects = train(cfg)
    client = mlflow.tracking.MlflowClient((run_dir / "mlruns").resolve().as_uri())
    (experiment,) = [e for e in client.search_experiments() if e.name == "clipo"]
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "train" and run.data.tags.get("clipo") == "true"  # task_name and tags
    history = objects["summary"].history
    logged = [m.value for m in client.get_metric_history(run.info.run_id, "train/reward")]
    assert logged == pytest.approx([row["train/reward"] for row in history])
    params = run.data.params
    assert params["rollout/group_size"] == "4" and params["model/name"] == "tiny" and params["seed"] == "0"
    path = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="rollouts.json",
                                               tracking_uri=client.tracking_uri, dst_path=str(tmp_path / "dl"))
    table = json.loads(open(path).read())
    rows = [dict(zip(table["columns"], values)) for values in table["data"]]
    jsonl = [json.loads(line) for line in (run_dir / "rollouts.jsonl").read_text().splitlines()]
    assert len(rows) == len(jsonl) == 16  # 2 steps x 2 prompts x 4 rollouts
    assert [(r["step"], r["response"], r["reward/verifier"]) for r in rows] == [
        (r["step"], r["response"], r["rewards"]["verifier"]) for r in jsonl]


def test_the_config_is_logged_as_hyperparameters(parity_verifier, tmp_path):
    cfg = _config(tmp_path / "run", "data.val=null", "trainer.max_steps=1")  # the default CSV logger
    train(cfg)
    hparams = yaml.safe_load((tmp_path / "run" / "csv" / "hparams.yaml").read_text())
    assert hparams["rollout"]["group_size"] == 4 and hparams["reward_funcs"] == ["verifier"]
