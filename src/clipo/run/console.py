"""What a run prints: progress that reads well in a log file, and no third-party promotional tips.

A terminal gets Lightning's tqdm bar. Anything else (SLURM, nohup, CI, a pipe) gets `LineProgressBar`:
whole lines, at most one per `interval_s` for each loop, instead of a carriage-return stream that a
log file keeps every frame of.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
from hydra.experimental.callback import Callback
from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar

# logged by Lightning's logger and callback connectors on every Trainer construction / fit
PROMOTIONAL_PREFIX = "💡 Tip:"


def progress_bar(refresh_rate: int = 1, interval_s: float = 10.0, stream: Any = None) -> ProgressBar:
    """tqdm on a terminal, else `LineProgressBar(interval_s)`; `stream` defaults to stdout."""
    stream = stream or sys.stdout
    if stream.isatty():
        return TQDMProgressBar(refresh_rate=refresh_rate)
    return LineProgressBar(interval_s=interval_s, stream=stream)


class LineProgressBar(ProgressBar):
    """Progress as whole lines: one when a loop has run `interval_s` since its last line, one when it ends.

    train: `[train] step 3/12 (25%) | 41s elapsed, ~2m03s left | reward 0.41 acc 0.38`
    validation: `[validate] arith batch 2/4 | 12s elapsed` and `[validate] arith done: 4 batches in 23s`
    """

    def __init__(self, interval_s: float = 10.0, stream: Any = None) -> None:
        super().__init__()
        self.interval_s = interval_s
        self.stream = stream or sys.stdout
        self._enabled = True
        self._start = self._last = 0.0
        self._val_start = self._val_last = 0.0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _print(self, line: str) -> None:
        if self._enabled:
            print(line, file=self.stream, flush=True)

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._start = self._last = time.monotonic()
        self._first_step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args: Any) -> None:
        now = time.monotonic()
        done = trainer.global_step >= trainer.max_steps > 0
        if now - self._last < self.interval_s and not done:
            return
        self._last = now
        elapsed = now - self._start
        step, total = trainer.global_step, trainer.max_steps
        line = f"[train] step {step}/{total}" if total > 0 else f"[train] step {step}"
        if total > 0:
            line += f" ({step / total:.0%})"
        line += f" | {_duration(elapsed)} elapsed"
        steps_here = step - self._first_step
        if total > 0 and steps_here > 0 and not done:
            line += f", ~{_duration(elapsed / steps_here * (total - step))} left"
        metrics = {k: v for k, v in self.get_metrics(trainer, module).items() if k != "v_num"}
        if metrics:
            line += " | " + " ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
        self._print(line)

    def on_validation_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Any, batch_idx: int,
                                  dataloader_idx: int = 0) -> None:
        if batch_idx == 0:
            self._val_start = self._val_last = time.monotonic()

    def on_validation_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        now = time.monotonic()
        total = _batches(trainer.num_val_batches, dataloader_idx)
        name = _val_set_name(trainer, dataloader_idx)
        if total is not None and batch_idx + 1 >= total:
            self._print(f"[validate] {name} done: {batch_idx + 1} batches in {_duration(now - self._val_start)}")
        elif now - self._val_last >= self.interval_s:
            self._val_last = now
            of = f"/{total}" if total is not None else ""
            self._print(f"[validate] {name} batch {batch_idx + 1}{of} | {_duration(now - self._val_start)} elapsed")


def _batches(counts: Any, index: int) -> int | None:
    try:
        count = counts[index]
    except (IndexError, TypeError):
        return None
    return int(count) if count != float("inf") else None


def _val_set_name(trainer: L.Trainer, index: int) -> str:
    names = getattr(trainer.datamodule, "val_set_names", None) or []
    return names[index] if index < len(names) else f"set {index}"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class _DropPromotionalTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(PROMOTIONAL_PREFIX)


def quiet_third_party_output() -> None:
    """No promotional tips; vLLM's errors only (its start-up prints its whole engine config and a dozen
    warnings that concern GPUs and kernels a CPU run does not use; VLLM_LOGGING_LEVEL=INFO shows them);
    and off a terminal, no tqdm bars from transformers or huggingface_hub (loading and saving weights),
    whose frames a log file would keep as one long `\\r` line."""
    silence_promotional_tips()
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # read when vLLM is first imported
    logging.getLogger("vllm").setLevel(os.environ["VLLM_LOGGING_LEVEL"].upper())  # in case it was imported already
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"vllm\.")
    if not sys.stderr.isatty():
        import huggingface_hub.utils
        import transformers.utils.logging

        transformers.utils.logging.disable_progress_bar()
        huggingface_hub.utils.disable_progress_bars()


def silence_promotional_tips() -> None:
    """Drop Lightning's "💡 Tip: ... try installing litlogger/litmodels" lines (logged through its
    rank-zero loggers); everything else Lightning logs stays."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                 "lightning_utilities.core.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropPromotionalTips) for f in logger.filters):
            logger.addFilter(_DropPromotionalTips())


class RunFolderCheck(Callback):
    """A Hydra callback (`configs/hydra/default.yaml`): before Hydra makes the run folder and opens its
    log file there, check the folder can be written, and otherwise stop with one line saying so (Hydra's
    own message is "Unable to configure handler 'file'", with no folder named)."""

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        _stop_unless_writable(config, "hydra.run.dir", "run folder")

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        _stop_unless_writable(config, "hydra.sweep.dir", "sweep folder")


def _stop_unless_writable(config: Any, key: str, what: str) -> None:
    """Exit 2 with one line when the folder `key` names cannot be written."""
    from omegaconf import OmegaConf

    folder = Path(str(OmegaConf.select(config, key)))
    if problem := folder_write_problem(folder):
        print(f"clipo: cannot write the {what} {folder} ({problem}); set {key} to a writable folder, "
              f"e.g. {key}=$HOME/clipo_runs/<name>", file=sys.stderr, flush=True)
        raise SystemExit(2)


def folder_write_problem(folder: Path) -> str | None:
    """Why a file cannot be created in `folder` (made if absent), or None when one can."""
    probe = folder / f".clipo_write_check_{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.touch()
        probe.unlink()
    except OSError as error:
        return f"{error.strerror or type(error).__name__}: {error.filename or folder}"
    return None
