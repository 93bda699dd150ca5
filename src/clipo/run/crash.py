"""A crash keeps what was done and says what to fix.

`CrashCheckpoint` (a callback) saves `last.ckpt` when an exception ends the fit: the state of the
last completed RL step. An exception inside a step that has not yet changed any weight (generation,
rewards, a verifier: most failures) leaves the weights as the previous step left them, so the RNG,
the data position and DAPO's refill count are put back to where the step started before saving, and
a resumed run replays the failed step as if it had never begun. Once an optimizer (the policy's or
the head's) has stepped inside the step, the weights are part way through it: nothing is saved then,
and the previous checkpoint stays. Only single-process runs save (a collective save would wait for
ranks that did not fail). Nothing is saved before a first step has completed: there is nothing to keep.

With several processes each rank records its own failure for the others (`clipo.run.ranks`), and a
rank whose collective broke because another rank failed reports that rank's own error as the cause.

`record_crash` then writes `summary.json` with `crashed: true` and the error, and the full traceback
into `<run>/train.log`; `crash_report` gives the one line the console ends with, and advice that fits:
"continue with ckpt_path=last" only where a checkpoint exists.
"""

from __future__ import annotations

import logging
import traceback
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn

from clipo.run import ranks
from clipo.run.crash_report import CrashReport, crash_report, error_text, what_to_do
from clipo.run.rng import collect_rng_states, set_rng_states

__all__ = ["CrashCheckpoint", "CrashReport", "crash_report", "error_text", "has_last_checkpoint", "what_to_do",
           "write_traceback"]

log = logging.getLogger(__name__)


class CrashCheckpoint(L.Callback):
    """On an exception during fit, `last.ckpt` of the last completed RL step (see the module docstring).
    Put it first among the callbacks, so a step counts as completed before any other end-of-step hook."""

    def __init__(self) -> None:
        self.started = self.in_step = self.changed = False
        self.start: dict[str, Any] = {}
        self.outcome: str | None = None  # what was saved, for the console line and summary.json
        self.checkpoint: str | None = None

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        ranks.set_phase(f"after RL step {trainer.global_step}", trainer.global_step)
        self.started = True  # a checkpoint is restored by now: saving cannot overwrite it with fresh weights
        head = getattr(getattr(module, "head_step", None), "optimizer", None)
        for optimizer in [*trainer.optimizers, *([head] if head is not None else [])]:
            while not isinstance(optimizer, torch.optim.Optimizer) and hasattr(optimizer, "optimizer"):
                optimizer = optimizer.optimizer  # DeepSpeed's ZeRO optimizer wraps the torch one that steps
            optimizer.register_step_post_hook(self._weights_changed)

    def _weights_changed(self, *args: Any) -> None:
        self.changed = True

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, *args: Any) -> None:
        datamodule = trainer.datamodule
        ranks.set_phase(f"RL step {trainer.global_step + 1}", trainer.global_step)
        self.in_step, self.changed = True, False
        self.start = {"rng": collect_rng_states(), "consumed": getattr(datamodule, "_consumed", None),
                      "refills": getattr(datamodule, "_refills", None)}

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self.in_step = False
        ranks.set_phase(f"after RL step {trainer.global_step}", trainer.global_step)

    def on_validation_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._before_validation = ranks.BOARD.phase
        ranks.set_phase(f"validation {'after' if self.started else 'before'} RL step {trainer.global_step}")

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        ranks.set_phase(getattr(self, "_before_validation", "validation done"))

    def on_exception(self, trainer: L.Trainer, module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, Exception):
            return  # a stop signal or a second Ctrl-C: signals.py has its own rules
        ranks.record_failure(exception, Path(trainer.default_root_dir), error_text(exception))  # before sockets close
        if trainer.checkpoint_callback is None or not self.started or trainer.state.fn != TrainerFn.FITTING:
            return  # set-up, restore or a validation outside fit: nothing new to keep
        kept = "; the last checkpoint written stays" if has_last_checkpoint(trainer) else ""
        if trainer.world_size > 1:
            self.outcome = f"not saved (several processes){kept}"
            return
        if trainer.global_step == 0 and self.in_step:
            self.outcome = "no step was completed, so there is nothing to keep"
            return
        if self.in_step and self.changed:
            self.outcome = f"not saved: the step had already updated weights{kept}"
            return
        if self.in_step:
            self._rewind(trainer)
        from clipo.run.signals import save_last

        try:
            save_last(trainer)
        except Exception as error:  # noqa: BLE001 - the original exception is the one to report
            self.outcome = f"no checkpoint could be saved either ({type(error).__name__})"
            return
        self.checkpoint = trainer.checkpoint_callback.last_model_path or None
        self.outcome = (f"the state after step {trainer.global_step} is saved in {self.checkpoint}" if self.checkpoint
                        else "nothing saved (callbacks.model_checkpoint.save_last is off)")

    def _rewind(self, trainer: L.Trainer) -> None:
        """Put back what the failed step had drawn: RNG, data position, refill batches."""
        datamodule, start = trainer.datamodule, self.start
        set_rng_states(start["rng"])
        if start.get("consumed") is not None:
            datamodule._consumed = start["consumed"] - 1  # the failed step's batch is drawn again
        if start.get("refills") is not None:
            datamodule._refills = start["refills"]


def has_last_checkpoint(trainer: L.Trainer) -> bool:
    """Whether the run's checkpoint folder holds a `last*.ckpt` that `ckpt_path=last` would continue from."""
    folder = getattr(trainer.checkpoint_callback, "dirpath", None)
    return bool(folder) and any(p.exists() for p in Path(folder).glob("last*.ckpt"))


def write_traceback(error: BaseException, run_dir: Path, rank: int | None = None) -> None:
    """The full traceback into the run's log file: through the Hydra file handler of the run folder
    (train.log, without the console), or into `<run>/train.log` directly when there is none (train()
    called from Python). `rank`: the process's rank when several ran."""
    title = "training crashed" if rank is None else f"training crashed on rank {rank}"
    record = logging.LogRecord("clipo.run.crash", logging.ERROR, __file__, 0, title, None,
                               (type(error), error, error.__traceback__))
    handlers = [h for h in logging.getLogger().handlers
                if isinstance(h, logging.FileHandler) and Path(h.baseFilename).parent == run_dir.resolve()]
    for handler in handlers:
        handler.handle(record)
    if not handlers:
        with open(run_dir / "train.log", "a") as file:
            file.write(f"{title}\n" + "".join(traceback.format_exception(error)))
