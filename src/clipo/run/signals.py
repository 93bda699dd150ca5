"""Stopping loses nothing: SIGTERM, SIGINT and SIGUSR1 end the current RL step, write `last.ckpt`,
and the run exits with 128 + the signal's number after writing an interrupted `summary.json`.
The stopped step is complete: its metrics row is logged (the stop lets Lightning finish the step,
`trainer.should_stop`), so a resumed run continues every log with nothing missing.

A second stop signal of any kind, or a first one while the step is stuck past `signals.grace_s`
(a collective waiting on a rank that never comes), ends the run at once: see `clipo.run.stop_signals`.

How this sits with Lightning's own signal connector (lightning/pytorch/trainer/connectors/signal_connector.py):
- SIGTERM: at the start of fit/validate Lightning installs a handler that, with several processes,
  broadcasts a tensor from inside the signal handler (wherever the main thread is, between any two
  collectives of the step, which can pair with another rank's different collective) and signals
  the ranks it launched. `StopOnSignal` puts clipo's handler back at the start of training and of
  validation: every rank decides to stop at the same step end, in one collective
  (`reduce_boolean_decision`), wherever the signal reached.
- SIGINT: Lightning only handles the `KeyboardInterrupt` a second stop signal raises here (then it
  exits at once; the atomic checkpoint writer removes any partial file on the way out).
- SIGUSR1: Lightning installs its SLURM requeue handler only under SLURM with auto-requeue and only when
  no handler is set. Ours is set, so the requeue is deferred to the step's end instead of happening
  mid-step: there `StopOnSignal` calls Lightning's own handler, which saves `hpc_ckpt_<n>.ckpt` and runs
  `scontrol requeue`; the requeued job resumes from that checkpoint (Lightning picks it when
  `ckpt_path` is null under SLURM).
"""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from typing import Any

import lightning as L
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from clipo.run.stop_signals import STOP_SIGNALS, ForcedStop, StopSignals

log = logging.getLogger(__name__)

__all__ = ["STOP_SIGNALS", "ForcedStop", "StopOnSignal", "StopSignals", "interrupted_line", "save_last"]


class StopOnSignal(L.Callback):
    """At a step boundary after a stop signal: write `last.ckpt` (if this step is not saved yet) and end the fit
    once Lightning has logged the step (`trainer.should_stop`; a validation due then is not run). Add it
    after every other callback, so the step's history is saved."""

    def __init__(self, stop: StopSignals) -> None:
        self.stop = stop
        self.stopping = False  # the fit ends after this step

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.stop.install()
        if self._decided(trainer):  # stopped while the run was being set up: nothing new to save
            raise SIGTERMException

    def on_validation_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.stop.install()
        if self.stopping:  # Lightning validates on `should_stop`; the stop should not wait for it
            raise SIGTERMException

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if not self._decided(trainer):
            return
        save_last(trainer)
        if self.stop.signum == signal.SIGUSR1 and _slurm_requeue(trainer):
            trainer._signal_connector._slurm_sigusr_handler_fn(signal.SIGUSR1, None)
        self.stopping = trainer.should_stop = True  # Lightning logs this step's row, then leaves the loop

    def on_validation_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        # ranks may hold different numbers of validation batches, so a collective here could hang: with
        # several processes the stop waits for the validation's end (every rank reaches it)
        if trainer.world_size == 1:
            self._stop_validation(trainer)

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.world_size > 1 and trainer.state.fn != TrainerFn.FITTING:
            self._stop_validation(trainer)  # inside fit, the next training step's end stops (and saves it)

    def _stop_validation(self, trainer: L.Trainer) -> None:
        if self._decided(trainer):
            if trainer.state.fn == TrainerFn.FITTING:  # a validation inside fit: its step is complete
                save_last(trainer)
            raise SIGTERMException

    def _decided(self, trainer: L.Trainer) -> bool:
        """Whether to stop now: on every process together (a signal may reach only some), else collectives
        would hang."""
        if not trainer.strategy.reduce_boolean_decision(self.stop.signum is not None, all=False):
            return False
        if self.stop.signum is None:
            self.stop.signum = signal.SIGTERM  # another rank's signal: stop as for SIGTERM
        return True


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


def interrupted_line(signal_name: str | None, step: int, checkpoint: str | None, resumed: Any, run_dir: str) -> str:
    """The console's line after a stop: what was kept and how to continue (only what exists is offered).
    `resumed`: the `Resume` this run started from, or None."""
    if checkpoint:
        return (f"interrupted by {signal_name} after RL step {step}, saved in {checkpoint}; continue with "
                f"hydra.run.dir={run_dir} ckpt_path=last")
    if resumed is not None:
        return (f"interrupted by {signal_name} before this run completed a step; its checkpoint is unchanged: "
                f"continue with ckpt_path={resumed.path}")
    return f"interrupted by {signal_name} before any RL step was completed: nothing to keep; start the run again"


def kill_launched_processes(trainer: L.Trainer, wait_s: float = 0.0) -> None:
    """End the rank processes Lightning's launcher started from this one, which would otherwise wait on this
    rank (a rank stuck in its own code never reaches the collective that would fail), after giving them
    `wait_s` seconds to end by themselves (a rank that failed first is writing its report)."""
    from lightning.pytorch.strategies.launchers import _SubprocessScriptLauncher

    launcher = trainer.strategy.launcher
    if not isinstance(launcher, _SubprocessScriptLauncher):
        return
    deadline = time.monotonic() + wait_s
    for process in launcher.procs:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
