"""Stopping loses nothing: SIGTERM, SIGINT and SIGUSR1 end the current RL step, write `last.ckpt`,
and the run exits with 128 + the signal's number after writing an interrupted `summary.json`.

How this sits with Lightning's own signal connector (lightning/pytorch/trainer/connectors/signal_connector.py):
- SIGTERM: at the start of fit/validate Lightning composes its handler with the one already installed
  (ours). Its handler sets `trainer.received_sigterm` and its loops raise `SIGTERMException` (a
  `SystemExit` with code 0) after the batch; `StopOnSignal` runs first, at the batch's end, saves, and
  raises the same exception, which `train()` turns into the non-zero exit.
- SIGINT: Lightning only handles the `KeyboardInterrupt` a second Ctrl-C raises here (then it exits at
  once; the atomic checkpoint writer removes any partial file on the way out).
- SIGUSR1: Lightning installs its SLURM requeue handler only under SLURM with auto-requeue and only when
  no handler is set. Ours is set, so the requeue is deferred to the step's end instead of happening
  mid-step: there `StopOnSignal` calls Lightning's own handler, which saves `hpc_ckpt_<n>.ckpt` and runs
  `scontrol requeue`; the requeued job resumes from that checkpoint (Lightning picks it when
  `ckpt_path` is null under SLURM).
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

import lightning as L
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class StopSignals:
    """While entered, the stop signals are recorded instead of killing the process (`signum`); a second
    SIGINT raises `KeyboardInterrupt` at once (`forced`)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.forced = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # signal.signal works there only
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            self.forced = True
            raise KeyboardInterrupt
        if self.signum is None:
            self.signum = signum
            again = " (Ctrl-C again to stop at once)" if signum == signal.SIGINT else ""
            log.warning("received %s: finishing the current step, then writing a checkpoint%s",
                        signal.Signals(signum).name, again)

    @property
    def name(self) -> str | None:
        return signal.Signals(self.signum).name if self.signum is not None else None

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGTERM)


class StopOnSignal(L.Callback):
    """At a step boundary after a stop signal: write `last.ckpt` (if this step is not saved yet) and raise
    Lightning's `SIGTERMException`. Add it after every other callback, so the step's history is saved."""

    def __init__(self, stop: StopSignals) -> None:
        self.stop = stop

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self._maybe_stop(trainer)

    def on_validation_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        # ranks may hold different numbers of validation batches, so a collective here could hang:
        # with several processes the stop waits for the next training step's end (SIGTERM aside:
        # Lightning's evaluation loop stops on it by itself, keeping the last periodic checkpoint)
        if trainer.world_size == 1:
            self._maybe_stop(trainer)

    def _maybe_stop(self, trainer: L.Trainer) -> None:
        # every process stops at the same step (a signal may reach only some), else collectives would hang
        if not trainer.strategy.reduce_boolean_decision(self.stop.signum is not None, all=False):
            return
        if self.stop.signum is None:
            self.stop.signum = signal.SIGTERM
        if trainer.state.fn == TrainerFn.FITTING:
            save_last(trainer)
            if self.stop.signum == signal.SIGUSR1 and _slurm_requeue(trainer):
                trainer._signal_connector._slurm_sigusr_handler_fn(signal.SIGUSR1, None)
        raise SIGTERMException


def save_last(trainer: L.Trainer) -> None:
    """`last.ckpt` through the checkpoint callback (so `ckpt_path=last` and its bookkeeping see it)."""
    from clipo.run.checkpointing import LastStepCheckpoint

    callback = trainer.checkpoint_callback
    if isinstance(callback, LastStepCheckpoint):
        callback.save_last_now(trainer)
    elif callback is not None and getattr(callback, "save_last", False):
        callback._save_last_checkpoint(trainer, callback._monitor_candidates(trainer))
    else:
        trainer.save_checkpoint(f"{trainer.default_root_dir}/checkpoints/last.ckpt")


def _slurm_requeue(trainer: L.Trainer) -> bool:
    environment = trainer._accelerator_connector.cluster_environment
    return isinstance(environment, SLURMEnvironment) and environment.auto_requeue \
        and environment.requeue_signal == signal.SIGUSR1
