"""The loggers for real: `logger=mlflow` (a local file store in the run folder): metrics, the config as params,
the rollout rows as a table artifact; TensorBoard and W&B (offline): scalars and rollout tables, continued by a
resume in the same folder (TensorBoard's steps each once, W&B's run id kept); the config as hyperparameters."""

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


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    """W&B offline, its caches in the test's folder; the last run finished and W&B's service stopped after."""
    wandb = pytest.importorskip("wandb")  # the dev extra installs it
    for name, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CACHE_DIR": tmp_path / "wandb_cache",
                        "WANDB_CONFIG_DIR": tmp_path / "wandb_config", "WANDB_DATA_DIR": tmp_path / "wandb_data"}.items():
        monkeypatch.setenv(name, str(value))
    yield wandb
    wandb.finish()
    wandb.teardown()


def _tensorboard(run):
    """What TensorBoard shows of the run: its reader, which applies the purges a resumed writer asks for."""
    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    scalars = {e.step: float(tensor_util.make_ndarray(e.tensor_proto)) for e in events.Tensors("train/reward")}
    steps = [e.step for e in events.Tensors("train/reward")]
    texts = [(e.step, tensor_util.make_ndarray(e.tensor_proto).item().decode()) for e in events.Tensors("rollouts/text_summary")]
    return steps, scalars, texts


def _wandb_runs(run):
    """(id, folder) of each offline W&B run in the run folder, oldest first (wandb names them by start and id)."""
    return [(folder.name.rsplit("-", 1)[1], folder) for folder in sorted(run.glob("wandb/offline-run-*"))]


def _wandb_history(folder):
    """The history rows of a finished offline W&B run (its records are flushed when it finishes)."""
    from tests.run.wandb_records import history, run_id

    (path,) = folder.glob("run-*.wandb")
    assert run_id(path) == folder.name.rsplit("-", 1)[1]
    return history(path)


def test_tensorboard_and_wandb_get_scalars_and_rollout_tables_and_resume_continues_them(
        parity_verifier, offline_wandb, tmp_path):
    """A run of 4 RL steps checkpointed at 2, then resumed from step 2 in its own folder (as after a kill at
    step 4): TensorBoard shows each step's scalars and rollout table once (the steps after the checkpoint
    purged and logged again); W&B's resumed run has the first run's id and logs the steps after it."""
    from clipo.rl.rollout_log import markdown_rows

    run = tmp_path / "run"
    overrides = ["logger=[csv,tensorboard,wandb]", "trainer.max_steps=4", "data.val=null",
                 "callbacks.model_checkpoint.every_n_train_steps=2", "callbacks.model_checkpoint.save_top_k=-1",
                 "logging.rollouts_max_rows_per_step=4"]
    _, objects = train(_config(run, *overrides))
    first = [row["train/reward"] for row in objects["summary"].history]
    jsonl = [json.loads(line) for line in (run / "rollouts.jsonl").read_text().splitlines()]
    steps, scalars, texts = _tensorboard(run)
    # RL step s is logged at step s - 1 (the steps done before it), its scalars and its table alike
    assert steps == [0, 1, 2, 3] and [scalars[s] for s in steps] == pytest.approx(first)
    assert [step for step, _ in texts] == [0, 1, 2, 3]
    for step, text in texts:
        assert text == markdown_rows([r for r in jsonl if r["step"] == step + 1])
    _, objects = train(_config(run, *overrides, f"ckpt_path={run / 'checkpoints' / 'step_000002.ckpt'}"))
    resumed = [row["train/reward"] for row in objects["summary"].history]
    steps, scalars, texts = _tensorboard(run)
    assert steps == [0, 1, 2, 3], "each step once: the first run's steps 2-3 purged, the resumed run's kept"
    assert [scalars[s] for s in steps] == pytest.approx(first[:2] + resumed[2:])
    assert [step for step, _ in texts] == [0, 1, 2, 3]
    jsonl = [json.loads(line) for line in (run / "rollouts.jsonl").read_text().splitlines()]
    assert [text for _, text in texts] == [markdown_rows([r for r in jsonl if r["step"] == s]) for s in (1, 2, 3, 4)]

    (run_id, folder), (resumed_id, resumed_folder) = _wandb_runs(run)
    assert resumed_id == run_id == objects["summary"].wandb_id  # the checkpoint's W&B run continues
    rows = _wandb_history(folder)  # finished when the resumed run started its own
    logged = {r["trainer/global_step"]: r["train/reward"] for r in rows if "train/reward" in r}
    assert logged == pytest.approx(dict(enumerate(first)))
    tables = {r["trainer/global_step"]: r["rollouts/path"] for r in rows if "rollouts/path" in r}
    assert sorted(tables) == [0, 1, 2, 3]
    table = json.loads((folder / "files" / tables[1]).read_text())
    responses = [dict(zip(table["columns"], row))["response"] for row in table["data"]]
    assert responses == [r["response"] for r in jsonl if r["step"] == 2]

    train(_config(tmp_path / "fresh", "logger=wandb", "data.val=null", "trainer.max_steps=1"))
    ((fresh_id, _),) = _wandb_runs(tmp_path / "fresh")
    assert fresh_id != run_id, "a new run in the same process starts its own W&B run (Lightning would reuse the open one)"
    rows = _wandb_history(resumed_folder)  # finished when the fresh run started
    logged = {r["trainer/global_step"]: r["train/reward"] for r in rows if "train/reward" in r}
    assert logged == pytest.approx({2: resumed[2], 3: resumed[3]})
