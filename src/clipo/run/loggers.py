"""Logger helpers: the MLflow logger with a local store by default, W&B with one W&B run per clipo run,
and the run's config as hyperparameters.

    python src/clipo/train.py logger=mlflow                      # <run dir>/mlruns, MLflow's file store
    python src/clipo/train.py logger=mlflow logger.mlflow.tracking_uri=http://mlflow.example:5000
    WANDB_MODE=offline python src/clipo/train.py logger=[csv,wandb]   # <run dir>/wandb/offline-run-*
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import WandbLogger


def mlflow_logger(save_dir: str, experiment_name: str = "clipo", run_name: str | None = None,
                  tracking_uri: str | None = None, tags: Sequence[str] | dict | None = None, **kwargs: Any) -> Any:
    """Lightning's `MLFlowLogger`, writing to `tracking_uri` or else a file store in `save_dir`.

    MLflow 3 keeps its file store in maintenance mode and refuses it unless
    `MLFLOW_ALLOW_FILE_STORE=true`; a local run folder needs no server or database, so that is set
    (unless already set) when the store is local files. `tags` may be clipo's list of tags.
    """
    from lightning.pytorch.loggers import MLFlowLogger

    uri = tracking_uri or Path(save_dir).resolve().as_uri()  # file:///...
    if uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    if tags is not None and not isinstance(tags, dict):
        tags = {str(tag): "true" for tag in tags}
    return MLFlowLogger(experiment_name=experiment_name, run_name=run_name, tracking_uri=uri, tags=tags, **kwargs)


class WandbRunLogger(WandbLogger):
    """Lightning's `WandbLogger` (`configs/logger/wandb.yaml`) that starts a W&B run of its own.

    Lightning reuses any W&B run still open in the process, so the second `train()` of a notebook, or the
    second job of a basic-launcher multirun (jobs share one process), would log into the first run's W&B
    run. A run that an earlier clipo logger started is finished first; one the user started with
    `wandb.init()` is still reused, as Lightning does. A resumed run's id comes from its checkpoint
    (`clipo.run.run_logs.continue_logs`).
    """

    @property
    def experiment(self) -> Any:
        if self._experiment is None and _STARTED:
            import wandb

            if wandb.run is not None and wandb.run.id in _STARTED:
                wandb.finish()
        run = WandbLogger.experiment.fget(self)  # a dummy on ranks other than zero
        if isinstance(getattr(run, "id", None), str):
            _STARTED.add(run.id)
        return run


# ids of the W&B runs WandbRunLogger started in this process
_STARTED: set[str] = set()


def log_run_config(loggers: Sequence[Any], config: dict) -> None:
    """The resolved run config as each logger's hyperparameters (MLflow params, W&B config,
    CSV `hparams.yaml`, TensorBoard hparams); nested keys are flattened by each logger."""
    for logger in loggers:
        logger.log_hyperparams(config)
