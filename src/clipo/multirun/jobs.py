"""A sweep's jobs: a failing job is recorded and the others run; each job returns its metric to the sweeper.

Run alone, a failed run exits non-zero (2 for a configuration error, 1 for a crash `train()` recorded).
In a multirun (`-m`) `SystemExit` would end the whole sweep (Hydra's launchers record ordinary exceptions
only), so `end_job` raises `JobFailed` instead: every launcher records it as that job's FAILED result and
runs the other jobs, the basic launcher in its own process, submitit's in theirs (`JobFailed` holds only
its message, so it pickles back from any job). After its batch Hydra's basic sweeper exits 1 naming the
first failed job; Optuna's sweeper tells Optuna the trial FAILED (never the best, ignored by its sampler)
and goes on while the failures stay within `hydra.sweeper.max_failure_rate`. A stop signal still ends the
sweep: the interrupted job saves its step and the process exits 128 + the signal, as a run does.

`JobOutcome`, a Hydra callback, writes each multirun job's `job.json` (status, error line, the metric
it returned) and logs a failed job in one line; `clipo.report` reads it back (`job_status`).
"""

from __future__ import annotations

import json
import logging
import traceback
from pathlib import Path
from typing import Any, NoReturn

from hydra.experimental.callback import Callback

from clipo.config import ConfigError
from clipo.run.lock_owner import is_rank_zero
from clipo.run.run_lock import RunFolderInUse

log = logging.getLogger(__name__)

JOB_FILE = "job.json"


class JobFailed(RuntimeError):
    """A multirun job's failure as its launcher records it: one line, what failed and where to look."""


def in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def one_line(text: str, limit: int = 1000) -> str:
    """A message on one line (a configuration error lists its problems on several)."""
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())[:limit]


def end_job(error: Exception) -> NoReturn:
    """How `main()` ends on `error`: log it, then exit (one run) or raise `JobFailed` (a multirun job).

    A `ConfigError` or a run folder in use exits 2, a crash `train()` recorded (its console line is the last note) exits 1; any
    other exception propagates unchanged in a single run (Hydra prints its traceback) and is logged with
    its traceback in a multirun job's log before `JobFailed` carries its first line.
    """
    from clipo.run.crash import error_text

    notes = getattr(error, "__notes__", None)
    if isinstance(error, (ConfigError, RunFolderInUse)):
        message, code = str(error), 2
    elif notes:
        message, code = notes[-1], 1
    elif in_multirun():
        log.error("".join(traceback.format_exception(error)).rstrip())
        message, code = error_text(error), 1
    else:
        raise error
    log.error(message)
    if in_multirun():
        raise JobFailed(one_line(message)) from None
    raise SystemExit(code) from None


class JobOutcome(Callback):
    """Writes `<job>/job.json` at the end of each multirun job: `status` (completed / failed), `error` (the
    failure's line), `returned` (what the job returned to the sweeper) and the job's number."""

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.utils import JobStatus
        from hydra.types import RunMode

        hydra = config.hydra
        if hydra.mode != RunMode.MULTIRUN or not is_rank_zero():  # a SLURM job's other tasks run the job too
            return
        failed = job_return.status == JobStatus.FAILED
        error = one_line(job_return._return_value) if failed else None
        returned = None if failed else job_return._return_value
        record = {"job": hydra.job.num, "status": "failed" if failed else "completed", "error": error,
                  "returned": returned if isinstance(returned, (int, float, str)) or returned is None else str(returned)}
        Path(hydra.runtime.output_dir, JOB_FILE).write_text(json.dumps(record, indent=1))
        if failed:
            log.error("job %s failed (above); the other jobs run. Its folder: %s", hydra.job.num, hydra.runtime.output_dir)
