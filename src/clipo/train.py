"""Hydra entry point: `python src/clipo/train.py loss=supcon pooler=mean`.

`train(cfg)` is a plain function (tests call it); `main()` only wraps it with Hydra.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import warnings
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, open_dict

from clipo.builders import build_datamodule, build_module, build_trainer
from clipo.config import ConfigError, validate_config, validate_model_source
from clipo.models import is_adapter, save_merged
from clipo.run.callbacks import RunSummary, format_summary
from clipo.run.console import quiet_third_party_output
from clipo.run.runtime import configure_threads, cpu_processes, resolve_precision
from clipo.run.signals import StopOnSignal, StopSignals
from clipo.run.strategies import sharded_state_dict

log = logging.getLogger(__name__)
# clipo checkpoints after the policy update on purpose (the state a resumed run continues from)
warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
# the frozen reference model stays in eval mode on purpose
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")


def train(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Validate the config, build every part, fit, export; returns (metrics, objects).

    A stop signal (SIGTERM, SIGINT, SIGUSR1) ends the current step, writes last.ckpt and an
    interrupted summary.json, and raises SystemExit(128 + signal); a second Ctrl-C exits at once.
    """
    validate_config(cfg)  # before any model or data is loaded
    validate_model_source(cfg)
    runtime = resolve_runtime(cfg)
    with StopSignals() as stop:
        try:
            return _train(cfg, runtime, stop)
        except (KeyboardInterrupt, SystemExit):
            if stop.forced:
                log.warning("second Ctrl-C: stopped at once (the last complete checkpoint stays)")
                raise SystemExit(stop.exit_code) from None
            raise


def resolve_runtime(cfg: DictConfig) -> dict[str, Any]:
    """Decide precision and threads from the hardware (before the Trainer is built) and say so."""
    quiet_third_party_output()
    threads = configure_threads(cpu_processes(cfg.trainer))
    precision = resolve_precision(cfg.trainer)
    with open_dict(cfg):
        cfg.trainer.precision = precision.value
    log.info("precision %s: %s", precision.value, precision.reason)
    log.info("torch threads %d (%s); tokenizers parallelism off", threads.value, threads.reason)
    return {"precision": str(precision.value), "precision_reason": precision.reason,
            "threads": threads.value, "threads_reason": threads.reason}


def _train(cfg: DictConfig, runtime: dict[str, Any], stop: StopSignals) -> tuple[dict[str, Any], dict[str, Any]]:
    L.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg)
    module = build_module(cfg)
    trainer = build_trainer(cfg)
    trainer.callbacks.append(StopOnSignal(stop))  # last: after the summary has recorded the step
    output_dir = Path(cfg.paths.output_dir)
    summary = next((c for c in trainer.callbacks if isinstance(c, RunSummary)), None)

    validate = cfg.data.get("val") and not cfg.trainer.get("fast_dev_run")
    val_before, val_after, metrics = {}, {}, {}
    try:
        if validate and cfg.validation.before_training:
            val_before = _validate(trainer, module, datamodule)
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}  # before validation replaces them
        if validate and stop.signum is None:
            val_after = _validate_after_fit(trainer, module, datamodule)
    except SIGTERMException:  # Lightning's exit after a stop signal (StopOnSignal has saved the step)
        stop.signum = stop.signum or signal.SIGTERM
        metrics = metrics or {k: float(v) for k, v in trainer.callback_metrics.items()}
    checkpoint = trainer.checkpoint_callback.last_model_path if trainer.checkpoint_callback else None
    if stop.signum is not None:
        module.close_verifiers()
        if trainer.is_global_zero:
            log.warning("interrupted by %s at step %d; continue with ckpt_path=%s", stop.name, trainer.global_step,
                        checkpoint)
            history = summary.history if summary is not None else []
            write_json_atomic(output_dir / "summary.json", {"metrics": metrics, "history": history, "runtime": runtime,
                                                            "interrupted": True, "signal": stop.name,
                                                            "checkpoint": checkpoint})
        raise SystemExit(stop.exit_code)

    merge = bool(cfg.get("export", {}).get("merge", False))
    policy_state = sharded_state_dict(module.policy)  # ZeRO-3 / FSDP: gathered by every rank, else None
    export_dir = export_policy(module, output_dir / "policy", merge, policy_state) if trainer.is_global_zero else None
    if summary is not None and trainer.is_global_zero:
        print(format_summary(summary, val_before, val_after, str(output_dir), checkpoint, str(export_dir)))
    module.close_verifiers()
    metrics |= val_after
    metrics |= {k.replace("val/", "val_before/", 1): v for k, v in val_before.items()}
    if trainer.is_global_zero:
        history = summary.history if summary is not None else []
        write_json_atomic(output_dir / "summary.json", {"metrics": metrics, "history": history, "runtime": runtime,
                                                        "interrupted": False})
    return metrics, {"trainer": trainer, "module": module, "datamodule": datamodule, "summary": summary}


def _validate_after_fit(trainer: L.Trainer, module: L.LightningModule, datamodule: L.LightningDataModule) -> dict[str, float]:
    """The final weights' validation: the one fit ran at its last step (val_check_interval dividing
    max_steps), or a new pass."""
    if module.last_validation is not None and module.rl_step > 0 and module.last_validation[0] == module.rl_step:
        return dict(module.last_validation[1])
    return _validate(trainer, module, datamodule)


def _validate(trainer: L.Trainer, module: L.LightningModule, datamodule: L.LightningDataModule) -> dict[str, float]:
    results = trainer.validate(module, datamodule=datamodule, verbose=False)
    return {k: float(v) for result in results for k, v in result.items()}


def write_json_atomic(path: Path, payload: dict) -> None:
    """Write JSON through a temporary file and a rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=float))
    os.replace(tmp, path)


def export_policy(module: L.LightningModule, target: Path, merge: bool = False, state_dict: dict | None = None) -> Path:
    """The final policy as a `save_pretrained` folder (a LoRA adapter in PEFT's format, plus a merged
    model in `policy_merged/` when `merge`), the contrastive head beside it; `state_dict`: the policy's
    full weights when they are sharded (ZeRO-3, FSDP)."""
    target.mkdir(parents=True, exist_ok=True)
    module.policy.save_pretrained(target, state_dict=state_dict)
    module.tokenizer.save_pretrained(target)
    if merge and is_adapter(module.policy):
        save_merged(module.policy, module.tokenizer, target.parent / f"{target.name}_merged")
    if module.contrastive is not None:
        torch.save(module.contrastive.state_dict(), target.parent / "contrastive_head.pt")
    return target


@hydra.main(version_base="1.3", config_path="../../configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        metrics, _ = train(cfg)
    except ConfigError as error:
        log.error(str(error))
        raise SystemExit(2) from None
    return metrics.get("train/reward")


if __name__ == "__main__":
    main()
