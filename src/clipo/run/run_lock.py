"""One live run per run folder: `<run>/.clipo.lock` names the process writing the folder.

Two runs in one folder interleave their logs (every CSV step twice, two runs' rollouts in one file) and
overwrite each other's checkpoints. A run takes the folder's lock before it writes anything there (the
Hydra callback below runs before Hydra writes `.hydra/` and its log; `train()` takes it again, a no-op
for the same process) and gives it back when it ends. The lock is a JSON record of its owner: pid,
host, the process's start time and boot id (a reused pid is not the owner), and the SLURM job.

A lock is live while its owner runs: on the same host, a process with that pid and start time; on
another host (a shared file system) it cannot be checked, so it is live unless it belongs to this very
SLURM job (a requeued job continuing its own folder). A lock whose owner has ended (killed, crashed
without cleanup, requeued) is stale and taken over with a warning. Only global rank zero locks: the
other ranks of a multi-process run write into the folder their rank zero holds.

Checking and writing the record happen under `flock` on the lock file, so two runs starting at once
cannot both take it (where the file system has no `flock`, a start within the same millisecond can).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from clipo.run.lock_owner import (
    LOCK_FILE,
    describe,
    is_rank_zero,
    is_this_process,
    owner_alive,
    parse_owner,
    slurm_job,
    this_process,
)

log = logging.getLogger(__name__)


class RunFolderInUse(RuntimeError):
    """The run folder is being written by another live run (a run exits 2 on it, as on a configuration error).
    This module imports nothing heavy: a lock is checked before torch loads. The owner's record and whether it
    still runs: `clipo.run.lock_owner`."""


@contextlib.contextmanager
def _flocked(path: Path) -> Iterator[int]:
    """The lock file at `path` opened (created empty if absent) and `flock`ed: the file now at `path`, not
    one a releasing run has just removed."""
    import fcntl

    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # held for the check and the write only (microseconds)
        except OSError:
            pass  # no flock on this file system: go on unguarded
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield fd
    finally:
        os.close(fd)  # closing releases the flock


def _refusal(folder: Path, owner: dict[str, Any], alive: bool | None) -> str:
    what = "is in use by a live run" if alive else "is locked by a run on another host, which cannot be checked from here"
    hint = f"wait for it to end or stop it (kill {owner.get('pid')}: it checkpoints and exits)" if alive else \
        f"if that run has ended (e.g. its node failed), delete {folder / LOCK_FILE}"
    return (f"the run folder {folder} {what} ({describe(owner)}); two runs in one folder would interleave their logs "
            f"and checkpoints. {hint[0].upper()}{hint[1:]}, or give this run its own folder (another hydra.run.dir)")


def acquire(folder: str | Path) -> bool:
    """Take the folder's lock for this process; True when this call took it (False: this process held it
    already, or this is not rank zero). Raises `RunFolderInUse` when a live run holds it."""
    folder = Path(folder)
    if not is_rank_zero():
        return False
    folder.mkdir(parents=True, exist_ok=True)
    with _flocked(folder / LOCK_FILE) as fd:
        owner = parse_owner(os.read(fd, 1 << 16).decode(errors="replace"))
        if owner is not None and is_this_process(owner):
            return False
        if owner is not None:
            alive = owner_alive(owner)
            requeued = alive is None and owner.get("slurm_job") and owner.get("slurm_job") == slurm_job()
            if alive or (alive is None and not requeued):
                raise RunFolderInUse(_refusal(folder, owner, alive))
            log.warning("took over the lock of %s: that run has ended (%s)", folder, describe(owner))
        record = json.dumps(this_process(), indent=1).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        os.fsync(fd)
    atexit.register(release, folder)  # a SystemExit out of Hydra's run skips its end callbacks
    return True


def release(folder: str | Path) -> None:
    """Remove the folder's lock when this process holds it (else leave it alone)."""
    path = Path(folder) / LOCK_FILE
    if not path.is_file():
        return
    with _flocked(path) as fd:
        owner = parse_owner(os.read(fd, 1 << 16).decode(errors="replace"))
        if owner is None or is_this_process(owner):  # ours, or an empty file made here or by a killed writer
            path.unlink()


@contextlib.contextmanager
def hold_run_folder(folder: str | Path) -> Iterator[None]:
    """The folder's lock for the block (a no-op where this process holds it already)."""
    took = acquire(folder)
    try:
        yield
    finally:
        if took:
            release(folder)


class RunFolderLock(Callback):
    """A Hydra callback (`configs/hydra/default.yaml`): a single run takes its folder's lock before Hydra
    writes `.hydra/` and its log there, so a second run into a live run's folder changes nothing in it.
    (A multirun's jobs are locked by `train()`: each has its own new folder.)"""

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        from omegaconf import OmegaConf

        try:
            acquire(str(OmegaConf.select(config, "hydra.run.dir")))
        except RunFolderInUse as error:
            print(f"clipo: {error}", file=sys.stderr, flush=True)  # Hydra's logging is not set up yet
            raise SystemExit(2) from None

    def on_run_end(self, config: Any, **kwargs: Any) -> None:
        from omegaconf import OmegaConf

        release(str(OmegaConf.select(config, "hydra.run.dir")))
