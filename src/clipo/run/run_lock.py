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
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

log = logging.getLogger(__name__)

LOCK_FILE = ".clipo.lock"
# environment variables that name a process's rank; any of them above zero: not the rank that locks
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "NODE_RANK", "GROUP_RANK")


class RunFolderInUse(RuntimeError):
    """The run folder is being written by another live run (a run exits 2 on it, as on a configuration error).
    This module imports nothing heavy: a lock is checked before torch loads."""


def _proc_start(pid: int) -> int | None:
    """The start time of process `pid` in clock ticks since boot (Linux /proc), or None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])  # field 22; the command name may hold spaces and ')'


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _slurm_job() -> str | None:
    """This SLURM job (array task included); a requeued job keeps it."""
    job, array, task = (os.environ.get(v) for v in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"))
    return f"{array}_{task}" if array and task else job


def this_process() -> dict[str, Any]:
    """The lock record of the calling process."""
    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "proc_start": _proc_start(pid), "boot_id": _boot_id(),
            "slurm_job": _slurm_job(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(sys.argv)[:500]}


def is_rank_zero() -> bool:
    """Whether this process is a run's global rank zero, from the launcher variables (before Lightning starts)."""
    return all(int(os.environ.get(name) or 0) == 0 for name in RANK_VARIABLES)


def owner_alive(owner: dict[str, Any]) -> bool | None:
    """True: the owner runs; False: it has ended; None: it runs on another host, where it cannot be checked."""
    if owner.get("host") != socket.gethostname():
        return None
    if owner.get("boot_id") and _boot_id() and owner["boot_id"] != _boot_id():
        return False  # the machine restarted since
    pid = int(owner.get("pid") or 0)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    start = _proc_start(pid)
    return owner.get("proc_start") is None or start is None or start == owner["proc_start"]


def _is_this_process(owner: dict[str, Any]) -> bool:
    mine = this_process()
    return all(owner.get(k) == mine[k] for k in ("pid", "host", "proc_start"))


def _parse(text: str) -> dict[str, Any] | None:
    try:
        owner = json.loads(text)
    except ValueError:
        return None  # empty: free; half-written: its writer was killed while writing
    return owner if isinstance(owner, dict) and "pid" in owner else None


def read_owner(folder: str | Path) -> dict[str, Any] | None:
    """The record of the folder's lock, or None when there is none."""
    try:
        return _parse((Path(folder) / LOCK_FILE).read_text())
    except OSError:
        return None


def describe(owner: dict[str, Any]) -> str:
    return f"pid {owner.get('pid')} on {owner.get('host')}, started {owner.get('started')}: {owner.get('command', '')}"


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
        owner = _parse(os.read(fd, 1 << 16).decode(errors="replace"))
        if owner is not None and _is_this_process(owner):
            return False
        if owner is not None:
            alive = owner_alive(owner)
            requeued = alive is None and owner.get("slurm_job") and owner.get("slurm_job") == _slurm_job()
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
        owner = _parse(os.read(fd, 1 << 16).decode(errors="replace"))
        if owner is None or _is_this_process(owner):  # ours, or an empty file made here or by a killed writer
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
