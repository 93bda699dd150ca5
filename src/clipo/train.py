"""Hydra entry point: `python src/clipo/train.py loss=supcon pooler=mean`.

`train(cfg)` is a plain function (tests call it); `main()` only wraps it with Hydra.
"""

from __future__ import annotations

import logging
import signal
import warnings
from functools import partial
from typing import Any

import hydra
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from clipo.builders import run_config
from clipo.config import validate_config, validate_model_source
from clipo.evaluation.validation import final_validation, validation_pass
from clipo.multirun.jobs import end_job
from clipo.multirun.objective import objective_name, objective_value
from clipo.run.assembly import Run, build_run
from clipo.run.callbacks import format_summary
from clipo.run.export import export_policy
from clipo.run.facts import RunFacts, apply_facts, detect_facts
from clipo.run.outcome import record_crash, record_forced_stop, write_summary
from clipo.run.resume import Resume, prepare_resume
from clipo.run.run_lock import hold_run_folder
from clipo.run.signals import StopSignals, interrupted_line, kill_launched_processes

log = logging.getLogger(__name__)
# clipo checkpoints after the policy update on purpose (the state a resumed run continues from)
warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
# the frozen reference model stays in eval mode on purpose
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")


def train(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Validate the config, build every part, fit, export; returns (metrics, objects).

    A stop signal (SIGTERM, SIGINT, SIGUSR1) ends the current step, writes last.ckpt and an
    interrupted summary.json, and raises SystemExit(128 + signal); a second signal, or a step still running
    `signals.grace_s` later, exits at once.
    """
    validate_config(cfg)  # before any model or data is loaded
    validate_model_source(cfg)
    resume = prepare_resume(cfg, run_config(cfg))  # the same run, or an error before any weight loads
    facts = apply_facts(cfg, detect_facts(cfg))
    grace_s = (cfg.get("signals") or {}).get("grace_s")
    with hold_run_folder(cfg.paths.output_dir), StopSignals(grace_s=grace_s) as stop:  # one live run per folder
        try:
            return _train(cfg, facts, stop, resume)
        except (KeyboardInterrupt, SystemExit):
            if stop.forced:
                log.warning("second stop signal: stopped at once (the last complete checkpoint stays)")
                raise SystemExit(stop.exit_code) from None
            raise


def _train(cfg: DictConfig, facts: RunFacts, stop: StopSignals,
           resume: Resume | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    run = build_run(cfg, facts, stop, resume)
    if run.trainer.is_global_zero:
        stop.on_force = partial(record_forced_stop, run.trainer, run.summary, run.runtime, run.output_dir)
    try:
        metrics, val_before, val_after = _fit(cfg, run, stop, resume)
    except Exception as error:
        run.module.close_verifiers()
        record_crash(error, run.trainer, run.crash, run.summary, run.runtime, run.output_dir)
        kill_launched_processes(run.trainer, wait_s=10)  # ranks this one started would wait on it
        raise
    run.module.close_verifiers()
    trainer = run.trainer
    checkpoint = (trainer.checkpoint_callback.last_model_path if trainer.checkpoint_callback else None) or None
    if stop.signum is not None:
        if trainer.is_global_zero:
            log.warning(interrupted_line(stop.name, trainer.global_step, checkpoint, resume, str(run.output_dir)))
            write_summary(run.output_dir, metrics, run.summary, run.runtime, interrupted=True, signal=stop.name,
                          checkpoint=checkpoint)
        raise SystemExit(stop.exit_code)
    _finish(cfg, run, val_before, val_after, checkpoint)
    metrics |= val_after | {k.replace("val/", "val_before/", 1): v for k, v in val_before.items()}
    if trainer.is_global_zero:
        write_summary(run.output_dir, metrics, run.summary, run.runtime, interrupted=False)
    return metrics, {"trainer": trainer, "module": run.module, "datamodule": run.datamodule, "summary": run.summary}


def _fit(cfg: DictConfig, run: Run, stop: StopSignals, resume: Resume | None) -> tuple[dict, dict, dict]:
    """(the training's last metrics, held-out metrics before and after): validation before training when asked,
    the fit, and the final weights' validation unless a stop signal ended it."""
    trainer, module, datamodule = run.trainer, run.module, run.datamodule
    validating = cfg.data.get("val") and not cfg.trainer.get("fast_dev_run")
    val_before, val_after, metrics = {}, {}, {}
    try:
        if validating and cfg.validation.before_training:
            val_before = validation_pass(trainer, module, datamodule)
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume.path if resume is not None else None)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}  # before validation replaces them
        if validating and stop.signum is None:
            val_after = final_validation(trainer, module, datamodule)
    except SIGTERMException:  # Lightning's exit after a stop signal (StopOnSignal has saved the step)
        stop.signum = stop.signum or signal.SIGTERM
        metrics = metrics or {k: float(v) for k, v in trainer.callback_metrics.items()}
    return metrics, val_before, val_after


def _finish(cfg: DictConfig, run: Run, val_before: dict, val_after: dict, checkpoint: str | None) -> None:
    """The export (every rank gathers sharded weights; rank zero writes) and the summary on the console."""
    merge = bool(cfg.get("export", {}).get("merge", False))
    policy_state = run.module.full_policy_state()  # ZeRO-3 / FSDP: gathered by every rank, else None
    if run.trainer.is_global_zero:
        export_dir = export_policy(run.module, run.output_dir / "policy", merge, policy_state)
        if run.summary is not None:
            print(format_summary(run.summary, val_before, val_after, str(run.output_dir), checkpoint, str(export_dir)))


@hydra.main(version_base="1.3", config_path="../../configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Train; return `optimized_metric` to Hydra (a sweeper's objective). A failure exits non-zero, or in a
    multirun is recorded as the job's result while the other jobs run (`clipo.multirun.jobs`)."""
    try:
        objective = objective_name(cfg)
        metrics, _ = train(cfg)
    except Exception as error:  # noqa: BLE001 - end_job decides: exit, JobFailed, or raise it again
        end_job(error)
    return objective_value(metrics, objective)


if __name__ == "__main__":
    main()
