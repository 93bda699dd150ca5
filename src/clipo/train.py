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

from clipo.builders import build_datamodule, build_module, build_trainer, build_verifiers, run_config
from clipo.config import ConfigError, validate_config, validate_model_source
from clipo.data.checks import check_data, drop_overlong_prompts, prompt_token_limit
from clipo.models import is_adapter, save_merged
from clipo.registry import ENGINES
from clipo.run.callbacks import RunSummary, format_summary
from clipo.run.console import quiet_third_party_output
from clipo.run.crash import CrashCheckpoint, crash_line, error_text, what_to_do, write_traceback
from clipo.run.loggers import log_run_config
from clipo.run.precision import PrecisionPlan
from clipo.run.resume import Resume, prepare_resume
from clipo.run.run_logs import continue_logs
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
    resume = prepare_resume(cfg, run_config(cfg))  # the same run, or an error before any weight loads
    runtime, plan = resolve_runtime(cfg)
    with StopSignals() as stop:
        try:
            return _train(cfg, runtime, stop, resume, plan)
        except (KeyboardInterrupt, SystemExit):
            if stop.forced:
                log.warning("second Ctrl-C: stopped at once (the last complete checkpoint stays)")
                raise SystemExit(stop.exit_code) from None
            raise


def resolve_runtime(cfg: DictConfig) -> tuple[dict[str, Any], PrecisionPlan]:
    """Decide threads and the precision plan from the hardware (before the Trainer is built) and say so."""
    quiet_third_party_output()
    threads = configure_threads(cpu_processes(cfg.trainer))
    plan = resolve_precision(cfg)
    with open_dict(cfg):
        cfg.trainer.precision = plan.lightning
    for line in plan.lines():
        log.info(line)
    log.info("torch threads %d (%s); tokenizers parallelism off", threads.value, threads.reason)
    return {**plan.as_dict(), "threads": threads.value, "threads_reason": threads.reason}, plan


def check_training_data(cfg: DictConfig, datamodule: Any) -> None:
    """Load the train and validation sets and check their ground truths with the verifiers that will score
    them (`clipo.data.checks`), before the model loads."""
    train_verifier, val_verifiers = build_verifiers(cfg)
    try:
        check_data(datamodule, train_verifier, val_verifiers, bool(cfg.data.get("skip_bad_rows", False)))
    finally:
        for verifier in {id(v): v for v in [train_verifier, *val_verifiers.values()]}.values():
            verifier.close()


def _build_run(cfg: DictConfig, stop: StopSignals, resume: Resume | None,
               plan: PrecisionPlan | None = None) -> tuple[Any, Any, L.Trainer, CrashCheckpoint]:
    """The checked data, the module, the trainer with clipo's callbacks, and the logs continued from a
    resumed checkpoint's step."""
    L.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg)
    check_training_data(cfg, datamodule)
    module = build_module(cfg, plan)
    context = getattr(module.policy.config, "max_position_embeddings", None)
    if limit := prompt_token_limit(cfg.data.get("max_prompt_tokens", "auto"), context, cfg.rollout.max_new_tokens):
        drop_overlong_prompts(datamodule, module.tokenizer, limit)
    trainer = build_trainer(cfg)
    crash = CrashCheckpoint()
    trainer.callbacks.insert(0, crash)  # first: a step counts as done before any other end-of-step hook
    trainer.callbacks.append(StopOnSignal(stop))  # last: after the summary has recorded the step
    if resume is not None and resume.step >= 0 and trainer.is_global_zero:  # logs continue from the checkpoint
        rollouts = module.rollout_log.path if module.rollout_log else None
        continue_logs(trainer.loggers, rollouts, resume.step, resume.wandb_id)
    log_run_config(trainer.loggers, run_config(cfg))  # after the logs were continued: writing starts a log
    return datamodule, module, trainer, crash


def _train(cfg: DictConfig, runtime: dict[str, Any], stop: StopSignals, resume: Resume | None = None,
           plan: PrecisionPlan | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    datamodule, module, trainer, crash = _build_run(cfg, stop, resume, plan)
    runtime["engine"] = ENGINES.name_of(module.collector.engine)  # what rollout.engine=auto picked
    output_dir = Path(cfg.paths.output_dir)
    summary = next((c for c in trainer.callbacks if isinstance(c, RunSummary)), None)
    validate = cfg.data.get("val") and not cfg.trainer.get("fast_dev_run")
    val_before, val_after, metrics = {}, {}, {}
    try:
        if validate and cfg.validation.before_training:
            val_before = _validate(trainer, module, datamodule)
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume.path if resume is not None else None)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}  # before validation replaces them
        if validate and stop.signum is None:
            val_after = _validate_after_fit(trainer, module, datamodule)
    except SIGTERMException:  # Lightning's exit after a stop signal (StopOnSignal has saved the step)
        stop.signum = stop.signum or signal.SIGTERM
        metrics = metrics or {k: float(v) for k, v in trainer.callback_metrics.items()}
    except Exception as error:
        module.close_verifiers()
        if trainer.is_global_zero:
            record_crash(error, trainer, crash, summary, runtime, output_dir)
        raise
    checkpoint = trainer.checkpoint_callback.last_model_path if trainer.checkpoint_callback else None
    if stop.signum is not None:
        module.close_verifiers()
        if trainer.is_global_zero:
            log.warning("interrupted by %s at step %d; continue with ckpt_path=%s", stop.name, trainer.global_step,
                        checkpoint)
            write_summary(output_dir, metrics, summary, runtime, interrupted=True, signal=stop.name,
                          checkpoint=checkpoint)
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
        write_summary(output_dir, metrics, summary, runtime, interrupted=False)
    return metrics, {"trainer": trainer, "module": module, "datamodule": datamodule, "summary": summary}


def record_crash(error: Exception, trainer: L.Trainer, crash: CrashCheckpoint, summary: RunSummary | None,
                 runtime: dict[str, Any], output_dir: Path) -> None:
    """summary.json with `crashed: true` and the error, the full traceback in train.log, and the console's
    last line as a note on the exception (`main` prints it)."""
    write_traceback(error, output_dir)
    line = crash_line(error, trainer.global_step, crash.in_step, crash.outcome, str(output_dir))
    try:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        write_summary(output_dir, metrics, summary, runtime, interrupted=False, crashed=True, error=error_text(error),
                      step=trainer.global_step, checkpoint=crash.checkpoint,
                      what_to_do=what_to_do(error, str(output_dir)))
    except OSError as write_error:  # a full or read-only disk: the console line still says what happened
        line += f" (summary.json not written: {write_error})"
    error.add_note(line)


def _validate_after_fit(trainer: L.Trainer, module: L.LightningModule, datamodule: L.LightningDataModule) -> dict[str, float]:
    """The final weights' validation: the one fit ran at its last step (val_check_interval dividing
    max_steps), or a new pass."""
    if module.last_validation is not None and module.rl_step > 0 and module.last_validation[0] == module.rl_step:
        return dict(module.last_validation[1])
    return _validate(trainer, module, datamodule)


def _validate(trainer: L.Trainer, module: L.LightningModule, datamodule: L.LightningDataModule) -> dict[str, float]:
    results = trainer.validate(module, datamodule=datamodule, verbose=False)
    return {k: float(v) for result in results for k, v in result.items()}


def write_summary(output_dir: Path, metrics: dict, summary: RunSummary | None, runtime: dict, **outcome: Any) -> None:
    """`<run>/summary.json`: the metrics, the step history, the runtime decisions and how the run ended."""
    history = summary.history if summary is not None else []
    write_json_atomic(output_dir / "summary.json", {"metrics": metrics, "history": history, "runtime": runtime,
                                                    **outcome})


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
    except Exception as error:  # recorded by train(): summary.json, traceback in train.log, one line here
        notes = getattr(error, "__notes__", None)
        if not notes:
            raise
        log.error(notes[-1])
        raise SystemExit(1) from None
    return metrics.get("train/reward")


if __name__ == "__main__":
    main()
