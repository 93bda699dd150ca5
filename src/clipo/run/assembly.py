"""One training run put together: the checked data, the module, the trainer with clipo's callbacks, the logs
continued from a resumed checkpoint (what `clipo.train.train` fits)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import lightning as L
from omegaconf import DictConfig

from clipo.builders import build_datamodule, build_module, build_trainer, build_verifiers, run_config
from clipo.data.checks import check_training_data, drop_overlong_prompts, prompt_token_limit
from clipo.run.callbacks import RunSummary
from clipo.run.crash import CrashCheckpoint
from clipo.run.facts import RunFacts
from clipo.run.loggers import log_run_config
from clipo.run.resume import Resume
from clipo.run.run_logs import continue_logs
from clipo.run.signals import StopOnSignal, StopSignals


class Run(NamedTuple):
    """What one training run is made of, once built."""

    datamodule: Any
    module: Any
    trainer: L.Trainer
    crash: CrashCheckpoint
    summary: RunSummary | None
    output_dir: Path

    @property
    def runtime(self) -> dict[str, Any]:
        return self.module.facts.runtime()  # with the engine that rollout.engine=auto picked


def build_run(cfg: DictConfig, facts: RunFacts, stop: StopSignals, resume: Resume | None) -> Run:
    """The checked data, the module, the trainer with clipo's callbacks, and the logs continued from a
    resumed checkpoint's step."""
    L.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg)
    verifiers = build_verifiers(cfg)  # once: the data check and the run share them (and the math worker pool)
    check_training_data(cfg, datamodule, verifiers)
    module = build_module(cfg, facts, verifiers)
    context = getattr(module.policy.config, "max_position_embeddings", None)
    if limit := prompt_token_limit(cfg.data.get("max_prompt_tokens", "auto"), context, cfg.rollout.max_new_tokens):
        drop_overlong_prompts(datamodule, module.tokenizer, limit)
    trainer = build_trainer(cfg, facts)
    crash = CrashCheckpoint()
    trainer.callbacks.insert(0, crash)  # first: a step counts as done before any other end-of-step hook
    trainer.callbacks.append(StopOnSignal(stop))  # last: after the summary has recorded the step
    if resume is not None and resume.step >= 0 and trainer.is_global_zero:  # logs continue from the checkpoint
        rollouts = module.rollout_log.path if module.rollout_log else None
        continue_logs(trainer.loggers, rollouts, resume.step, resume.wandb_id)
    log_run_config(trainer.loggers, run_config(cfg))  # after the logs were continued: writing starts a log
    summary = next((c for c in trainer.callbacks if isinstance(c, RunSummary)), None)
    return Run(datamodule, module, trainer, crash, summary, Path(cfg.paths.output_dir))
