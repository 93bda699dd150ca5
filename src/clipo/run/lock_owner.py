"""Who holds a run folder (`clipo.run.run_lock`): a process's record (pid, host, start time, boot id, SLURM
job, command) and whether the process it names still runs. Imports nothing heavy."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

LOCK_FILE = ".clipo.lock"
# environment variables that name a process's rank; any of them above zero: not the rank that locks
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "NODE_RANK", "GROUP_RANK")


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


def slurm_job() -> str | None:
    """This SLURM job (array task included); a requeued job keeps it."""
    job, array, task = (os.environ.get(v) for v in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"))
    return f"{array}_{task}" if array and task else job


def this_process() -> dict[str, Any]:
    """The lock record of the calling process."""
    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "proc_start": _proc_start(pid), "boot_id": _boot_id(),
            "slurm_job": slurm_job(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
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


def is_this_process(owner: dict[str, Any]) -> bool:
    mine = this_process()
    return all(owner.get(k) == mine[k] for k in ("pid", "host", "proc_start"))


def parse_owner(text: str) -> dict[str, Any] | None:
    try:
        owner = json.loads(text)
    except ValueError:
        return None  # empty: free; half-written: its writer was killed while writing
    return owner if isinstance(owner, dict) and "pid" in owner else None


def read_owner(folder: str | Path) -> dict[str, Any] | None:
    """The record of the folder's lock, or None when there is none."""
    try:
        return parse_owner((Path(folder) / LOCK_FILE).read_text())
    except OSError:
        return None


def describe(owner: dict[str, Any]) -> str:
    return f"pid {owner.get('pid')} on {owner.get('host')}, started {owner.get('started')}: {owner.get('command', '')}"
