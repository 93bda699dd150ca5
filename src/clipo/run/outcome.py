"""How a run ended, written down: `<run>/summary.json` (metrics, step history, the runtime decisions and
the outcome) for a finished, interrupted, forced or crashed run, the crash's traceback and console line."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import lightning as L

from clipo.run.callbacks import RunSummary
from clipo.run.crash import CrashCheckpoint, crash_report, has_last_checkpoint, write_traceback
from clipo.run.signals import kill_launched_processes


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


def record_crash(error: Exception, trainer: L.Trainer, crash: CrashCheckpoint, summary: RunSummary | None,
                 runtime: dict[str, Any], output_dir: Path) -> None:
    """On every rank, the console's last line as a note on the exception (`main` prints it); on rank zero also
    summary.json with `crashed: true` and the error (another rank's, when it failed first), the full traceback
    in train.log."""
    report = crash_report(error, trainer.global_step, crash, str(output_dir), trainer.global_rank, trainer.world_size,
                          resumable=has_last_checkpoint(trainer))
    line = report.line
    write_traceback(error, output_dir, trainer.global_rank if trainer.world_size > 1 else None)
    if trainer.is_global_zero:
        try:
            metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
            write_summary(output_dir, metrics, summary, runtime, interrupted=False, crashed=True, error=report.error,
                          failed_rank=report.failed_rank, step=trainer.global_step, checkpoint=crash.checkpoint,
                          what_to_do=report.what_to_do)
        except OSError as write_error:  # a full or read-only disk: the console line still says what happened
            line += f" (summary.json not written: {write_error})"
    error.add_note(line)


def record_forced_stop(trainer: L.Trainer, summary: RunSummary | None, runtime: dict[str, Any], output_dir: Path,
                       exit_code: int) -> None:
    """Before a forced exit (`clipo.run.stop_signals`): an interrupted summary.json with the steps completed, and the
    processes Lightning launched ended with this one."""
    checkpoint = trainer.checkpoint_callback.last_model_path if trainer.checkpoint_callback else None
    write_summary(output_dir, {}, summary, runtime, interrupted=True, forced=True, exit_code=exit_code,
                  signal=signal.Signals(exit_code - 128).name, checkpoint=checkpoint or None)
    kill_launched_processes(trainer)
