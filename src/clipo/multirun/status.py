"""How each job of a sweep ended, and which jobs of the sweep's grid never started.

A job's status comes from what it left in its folder:
  completed    summary.json of a finished run
  crashed      summary.json with `crashed: true` (the error `train()` recorded)
  failed       job.json with `status: failed` (`clipo.multirun.jobs`), e.g. a configuration error
  interrupted  summary.json with `interrupted: true` (a stop signal; it can be continued)
  running      a live run holds the folder's lock (`clipo.run.run_lock`)
  killed       the lock of a run that ended without a result (SIGKILL, out of memory, a lost node)
  no result    none of these: still starting, or killed before it wrote anything
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from clipo.multirun.jobs import JOB_FILE, one_line
from clipo.run.lock_owner import describe, owner_alive, read_owner

FINISHED = "completed"
FAILED = ("crashed", "failed", "killed")


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def job_status(run_dir: str | Path) -> tuple[str, str]:
    """(status, detail): the detail is the error line of a failed job, what stopped or holds it otherwise."""
    run_dir = Path(run_dir)
    summary, job = _json(run_dir / "summary.json"), _json(run_dir / JOB_FILE)
    if summary.get("crashed"):
        return "crashed", one_line(summary.get("error") or job.get("error") or "")
    if job.get("status") == "failed":
        return "failed", one_line(job.get("error") or "")
    if summary.get("interrupted"):
        return "interrupted", f"stopped by {summary.get('signal')}; continue with hydra.run.dir={run_dir} ckpt_path=last"
    if summary:
        return FINISHED, ""
    owner = read_owner(run_dir)
    if owner is not None and owner_alive(owner) is not False:
        return "running", f"held by {describe(owner)}"
    log = next(iter(sorted(run_dir.glob("*.log"))), run_dir)
    if owner is not None:
        return "killed", f"ended without a result ({describe(owner)}): killed, out of memory or a lost node; see {log}"
    return "no result", f"no summary.json or job.json: still starting, or stopped before writing any; see {log}"


def planned_jobs(folder: str | Path) -> list[list[str]] | None:
    """The overrides of every job a basic-sweeper multirun planned, by job number (from its multirun.yaml,
    expanded as Hydra's basic sweeper does); None for another sweeper (e.g. Optuna's) or no multirun.yaml."""
    path = Path(folder) / "multirun.yaml"
    if not path.is_file():
        return None
    config = OmegaConf.load(path)
    if not str(OmegaConf.select(config, "hydra.sweeper._target_") or "").endswith("BasicSweeper"):
        return None
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    arguments = [f"{k}={v}" for k, v in params.items()] + list(OmegaConf.select(config, "hydra.overrides.task") or [])
    overrides = OverridesParser.create().parse_overrides(arguments)
    return [list(job) for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]


def swept_keys(jobs: list[list[str]]) -> list[str]:
    """The keys whose value differs between the planned jobs, in override order."""
    values: dict[str, set[str]] = {}
    for job in jobs:
        for override in job:
            key, _, value = override.partition("=")
            values.setdefault(key.lstrip("+~"), set()).add(value)
    return [key for key, seen in values.items() if len(seen) > 1]
