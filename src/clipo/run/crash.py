"""A crash keeps what was done and says what to fix.

`CrashCheckpoint` (a callback) saves `last.ckpt` when an exception ends the fit: the state of the
last completed RL step. An exception inside a step that has not yet changed any weight (generation,
rewards, a verifier: most failures) leaves the weights as the previous step left them, so the RNG,
the data position and DAPO's refill count are put back to where the step started before saving, and
a resumed run replays the failed step as if it had never begun. Once an optimizer (the policy's or
the head's) has stepped inside the step, the weights are part way through it: nothing is saved then,
and the previous checkpoint stays. Only single-process runs save (a collective save would wait for
ranks that did not fail).

`record_crash` then writes `summary.json` with `crashed: true` and the error, and the full traceback
into `<run>/train.log`; `crash_line` is the one line the console ends with.
"""

from __future__ import annotations

import errno
import logging
import traceback
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn

from clipo.run.rng import collect_rng_states, set_rng_states

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
        self.in_step, self.changed = True, False
        self.start = {"rng": collect_rng_states(), "consumed": getattr(datamodule, "_consumed", None),
                      "refills": getattr(datamodule, "_refills", None)}

    def on_train_batch_end(self, *args: Any) -> None:
        self.in_step = False

    def on_exception(self, trainer: L.Trainer, module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, Exception) or trainer.checkpoint_callback is None:
            return  # a stop signal or a second Ctrl-C: signals.py has its own rules
        if not self.started or trainer.state.fn != TrainerFn.FITTING:
            return  # set-up, restore or a validation outside fit: nothing new to keep
        if trainer.world_size > 1:
            self.outcome = "not saved (several processes); the last periodic checkpoint stays"
            return
        if self.in_step and self.changed:
            self.outcome = ("not saved: the step had already updated weights; the last periodic checkpoint "
                            "stays")
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
        self.outcome = f"the state after step {trainer.global_step} is saved in {self.checkpoint}"

    def _rewind(self, trainer: L.Trainer) -> None:
        """Put back what the failed step had drawn: RNG, data position, refill batches."""
        datamodule, start = trainer.datamodule, self.start
        set_rng_states(start["rng"])
        if start.get("consumed") is not None:
            datamodule._consumed = start["consumed"] - 1  # the failed step's batch is drawn again
        if start.get("refills") is not None:
            datamodule._refills = start["refills"]


def error_text(error: BaseException) -> str:
    """`Type: first line of the message`, at most 300 characters."""
    message = str(error).strip().splitlines()
    return f"{type(error).__name__}: {message[0] if message else ''}"[:300]


def what_to_do(error: BaseException, run_dir: str) -> str:
    """Advice for the common failures a user can act on; else where the traceback is."""
    text = str(error)
    resume = f"continue with hydra.run.dir={run_dir} ckpt_path=last"
    if isinstance(error, OSError) and error.errno == errno.ENOSPC or "No space left" in text or "unexpected pos" in text:
        return f"the disk is full: free space on the disk of {run_dir} (or set hydra.run.dir elsewhere), then {resume}"
    if isinstance(error, OSError) and error.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
        where = getattr(error, "filename", None) or run_dir
        return f"{where} is not writable: fix its permissions or set hydra.run.dir to a writable folder"
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return ("out of memory: lower data.prompts_per_step, ppo.micro_batch_size (or set "
                f"ppo.max_tokens_per_micro_batch) or rollout.max_new_tokens, then {resume}")
    return f"fix the cause (full traceback in {run_dir}/train.log), then {resume}"


def write_traceback(error: BaseException, run_dir: Path) -> None:
    """The full traceback into the run's log file: through the Hydra file handler of the run folder
    (train.log, without the console), or into `<run>/train.log` directly when there is none (train()
    called from Python)."""
    record = logging.LogRecord("clipo.run.crash", logging.ERROR, __file__, 0, "training crashed", None,
                               (type(error), error, error.__traceback__))
    handlers = [h for h in logging.getLogger().handlers
                if isinstance(h, logging.FileHandler) and Path(h.baseFilename).parent == run_dir.resolve()]
    for handler in handlers:
        handler.handle(record)
    if not handlers:
        with open(run_dir / "train.log", "a") as file:
            file.write("training crashed\n" + "".join(traceback.format_exception(error)))


def crash_line(error: BaseException, step: int, in_step: bool, outcome: str | None, run_dir: str) -> str:
    """The console's last line: what failed, where, what was kept, and what to do."""
    where = f"in RL step {step + 1}" if in_step else f"after RL step {step}"
    saved = f"; {outcome}" if outcome else ""
    return f"training failed {where}: {error_text(error)}{saved}. To do: {what_to_do(error, run_dir)}"
