"""Logger helpers: the MLflow logger with a local store by default, and the run's config as hyperparameters.

    python src/clipo/train.py logger=mlflow                      # <run dir>/mlruns, MLflow's file store
    python src/clipo/train.py logger=mlflow logger.mlflow.tracking_uri=http://mlflow.example:5000
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any


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


def log_run_config(loggers: Sequence[Any], config: dict) -> None:
    """The resolved run config as each logger's hyperparameters (MLflow params, W&B config,
    CSV `hparams.yaml`, TensorBoard hparams); nested keys are flattened by each logger."""
    for logger in loggers:
        logger.log_hyperparams(config)
