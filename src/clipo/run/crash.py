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

import errno
import logging
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn

from clipo.run import ranks
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


def error_text(error: BaseException) -> str:
    """`Type: first line of the message` (with the next line when the first only announces it, as torch's
    "Error(s) in loading state_dict for ...:"), at most 300 characters."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    message = " ".join(lines[:2]) if len(lines) > 1 and lines[0].endswith(":") else (lines[0] if lines else "")
    return f"{type(error).__name__}: {message}"[:300]


def what_to_do(error: BaseException, run_dir: str, resumable: bool = True) -> str:
    """Advice for the common failures a user can act on; else where the traceback is. `resumable`: the run
    folder holds a checkpoint to continue from (else the advice is to run again)."""
    text = str(error)
    resume = f"continue with hydra.run.dir={run_dir} ckpt_path=last" if resumable else "run the same command again"
    if isinstance(error, OSError) and error.errno == errno.ENOSPC or "No space left" in text or "unexpected pos" in text:
        return f"the disk is full: free space on the disk of {run_dir} (or set hydra.run.dir elsewhere), then {resume}"
    if isinstance(error, OSError) and error.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
        where = getattr(error, "filename", None) or run_dir
        return f"{where} is not writable: fix its permissions or set hydra.run.dir to a writable folder"
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return ("out of memory: lower data.prompts_per_step, ppo.micro_batch_size (or set "
                f"ppo.max_tokens_per_micro_batch) or rollout.max_new_tokens, then {resume}")
    if "Error(s) in loading state_dict" in text:
        return ("the checkpoint's weights do not fit this run's model (a change accepted with resume.allow_changes "
                "changes their shapes): resume with the checkpoint's model settings, or start fresh (ckpt_path=null)")
    return f"fix the cause (full traceback in {run_dir}/train.log), then {resume}"


@dataclass(frozen=True)
class CrashReport:
    """What a crash says: `line` on the console, `error` and `what_to_do` in summary.json, and the rank that
    failed first when several processes ran (`failed_rank`)."""

    line: str
    error: str
    what_to_do: str
    failed_rank: int | None = None


def crash_report(error: BaseException, step: int, crash: CrashCheckpoint, run_dir: str, rank: int = 0,
                 world: int = 1, resumable: bool = True) -> CrashReport:
    """The report of `error` on this rank (`step`: RL steps completed). With several processes, a collective
    that broke because another rank failed reports that rank's own error, and a timeout names the phase of
    each rank."""
    where = f"in RL step {step + 1}" if crash.in_step else f"after RL step {step}"
    saved = f"; {crash.outcome}" if crash.outcome else ""
    text, advice = error_text(error), what_to_do(error, run_dir, resumable)
    if world == 1:
        return CrashReport(f"training failed {where}: {text}{saved}. To do: {advice}", text, advice)
    phase = ranks.BOARD.phase
    if not ranks.is_communication_error(error):
        return CrashReport(f"training failed on rank {rank} ({phase}): {text}{saved}. To do: {advice}",
                           f"rank {rank} ({phase}): {text}", advice, rank)
    if (peer := ranks.first_peer_failure(Path(run_dir))) is not None:
        cause = f"rank {peer['rank']} ({peer['phase']}): {peer['error']}"
        line = (f"training failed on {cause}; rank {rank} stopped with it (its collective in {phase} broke){saved}. "
                f"To do: fix rank {peer['rank']}'s error (its traceback is in {run_dir}/train.log, under "
                f"\"training crashed on rank {peer['rank']}\"), then {advice.split(', then ')[-1]}")
        return CrashReport(line, cause, line.split("To do: ")[-1], peer["rank"])
    others = "; ".join(f"rank {r}: {p}" for r, p in sorted(ranks.peer_phases().items())) or "not known"
    if ranks.is_timeout(error):
        advice = (f"find why the other ranks did not reach this collective (their last phases: {others}); if they "
                  f"are only slower, raise distributed.timeout_s")
        cause = f"rank {rank}: a collective in {phase} timed out waiting for the other ranks ({text})"
    else:
        advice = "the other ranks' logs have the cause (a rank killed from outside, e.g. out of memory, records none)"
        cause = f"rank {rank}: its collective in {phase} lost another rank, which recorded no error ({text})"
    return CrashReport(f"training failed on {cause}{saved}. Last phases: {others}. To do: {advice}", cause, advice, rank)


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
