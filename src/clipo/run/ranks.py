"""Failures across processes: what each rank is doing, which rank failed first and why, and collectives
that give up instead of waiting forever.

When one rank raises (a reward function, a verifier, an out-of-memory), the others learn of it only as a
collective that breaks ("Connection reset by peer") or times out; their own error names no cause. So:

- each rank publishes the phase it is in (`RL step 3: generate`, `validation`, ...) to the process
  group's key-value store (the TCP store every launcher starts on the main address), a few keys a step;
- a rank that fails records its own error, its phase and step there and in `<run>/failures/`
  (readable after the store's host, rank 0, is gone);
- a rank whose collective breaks waits a moment for such a record and reports the failed rank's own
  error as the cause; a collective that timed out (`distributed.timeout_s`) names this rank's phase and
  where every other rank last was.
"""

from __future__ import annotations

import inspect
import json
import os
import time
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator

import torch.distributed as dist

from clipo.distributed import world

DEFAULT_TIMEOUT_S = {"cpu": 300.0, "gpu": 1800.0}
# seconds a rank whose collective broke waits for the failed rank's own record
PEER_RECORD_WAIT_S = 5.0
_COMMUNICATION = ("gloo", "nccl", "connection reset by peer", "connection closed by peer", "broken pipe",
                  "timed out", "watchdog caught collective", "processgroup")
_STARTED = time.time()


def timeout_seconds(setting: Any, on_cpu: bool) -> float:
    """`distributed.timeout_s` in seconds (`auto`: 300 on CPU processes, 1800 on GPUs)."""
    return DEFAULT_TIMEOUT_S["cpu" if on_cpu else "gpu"] if setting in (None, "auto") else float(setting)


def timeout_problem(setting: Any) -> str | None:
    if setting == "auto" or (isinstance(setting, (int, float)) and not isinstance(setting, bool) and setting > 0):
        return None
    return f"distributed.timeout_s={setting!r} must be a positive number of seconds or auto (300 on CPU, 1800 on GPU)"


def timed_strategy(spec: dict, name: str, cfg: Any) -> Any:
    """The Lightning strategy `strategy=` names, its collectives timing out after `distributed.timeout_s`: a
    `_target_` strategy built with it; `auto` over several processes as the DDP Lightning would pick, with it."""
    from hydra.utils import instantiate
    from lightning.fabric.utilities.imports import _IS_INTERACTIVE
    from lightning.pytorch.strategies import DDPStrategy

    from clipo.run.facts import training_device, training_processes

    on_cpu = training_device(cfg.trainer) == "cpu"
    timeout = timedelta(seconds=timeout_seconds((cfg.get("distributed") or {}).get("timeout_s", "auto"), on_cpu))
    if "_target_" in spec:  # a strategy of the user's own may take no timeout: it keeps its own
        from hydra.utils import get_class

        params = inspect.signature(get_class(spec["_target_"])).parameters
        takes_timeout = "timeout" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
        return instantiate(spec, **({"timeout": timeout} if takes_timeout else {}))
    if name == "auto" and training_processes(cfg.trainer) > 1:
        return DDPStrategy(timeout=timeout, start_method="fork" if _IS_INTERACTIVE else "popen")
    return name


class _Board:
    """This rank's view of the shared store (a client of its own, with a short timeout, so that a store whose
    host has died fails fast); disabled after its first failure."""

    def __init__(self) -> None:
        self.store: Any = None
        self.broken = False
        self.step, self.phase = 0, "setting up"

    def client(self) -> Any:
        if self.store is None and not self.broken and dist.is_available() and dist.is_initialized() \
                and dist.get_world_size() > 1 and "MASTER_ADDR" in os.environ:
            try:
                self.store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                                           timeout=timedelta(seconds=10), wait_for_workers=False)
            except Exception:  # noqa: BLE001 - the run goes on without phases
                self.broken = True
        return self.store

    def set(self, key: str, value: str) -> None:
        if (store := self.client()) is not None:
            try:
                store.set(f"clipo/{key}", value)
            except Exception:  # noqa: BLE001
                self.store, self.broken = None, True

    def get(self, key: str) -> str | None:
        if (store := self.client()) is not None:
            try:
                return store.get(f"clipo/{key}").decode() if store.check([f"clipo/{key}"]) else None
            except Exception:  # noqa: BLE001
                self.store, self.broken = None, True
        return None


BOARD = _Board()


def set_phase(phase: str, step: int | None = None) -> None:
    """Publish what this rank is doing now (`step`: RL steps completed, when it changed)."""
    BOARD.phase, BOARD.step = phase, BOARD.step if step is None else step
    if world()[1] > 1:
        BOARD.set(f"phase/{world()[0]}", phase)


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Inside: `<outer phase>: name`; an exception leaves it set, so the failure names where it happened."""
    outer = BOARD.phase
    set_phase(f"{outer.split(': ')[0]}: {name}")
    yield
    set_phase(outer)


def is_communication_error(error: BaseException) -> bool:
    """A collective that broke or timed out (the cause is then usually on another rank)."""
    text = f"{type(error).__name__} {error}".lower()
    return isinstance(error, getattr(dist, "DistError", ())) or any(word in text for word in _COMMUNICATION)


def is_timeout(error: BaseException) -> bool:
    text = str(error).lower()
    return "timed out" in text or "timeout" in text


def record_failure(error: BaseException, run_dir: Path, text: str) -> None:
    """This rank's own failure, for the other ranks: in the store and in `<run>/failures/rank_<r>.json`."""
    rank, size = world()
    if size == 1:
        return
    record = {"rank": rank, "error": text, "phase": BOARD.phase, "step": BOARD.step,
              "consequence": is_communication_error(error), "time": time.time()}
    BOARD.set(f"error/{rank}", json.dumps(record))
    try:
        folder = run_dir / "failures"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"rank_{rank}.json").write_text(json.dumps(record))
    except OSError:
        pass


def _peer_records(run_dir: Path) -> list[dict]:
    rank, size = world()
    records = []
    for other in (r for r in range(size) if r != rank):
        text = BOARD.get(f"error/{other}")
        path = run_dir / "failures" / f"rank_{other}.json"
        if text is None and path.is_file() and path.stat().st_mtime >= _STARTED - 1:  # not a previous run's
            text = path.read_text()
        if text:
            records.append(json.loads(text))
    return records


def first_peer_failure(run_dir: Path, wait_s: float = PEER_RECORD_WAIT_S) -> dict | None:
    """The earliest failure another rank recorded that was not itself a broken collective, waiting up to
    `wait_s` for one to appear; None when none did."""
    deadline = time.monotonic() + wait_s
    while True:
        causes = [r for r in _peer_records(run_dir) if not r.get("consequence")]
        if causes or time.monotonic() >= deadline:
            return min(causes, key=lambda r: r["time"]) if causes else None
        time.sleep(0.2)


def peer_phases() -> dict[int, str]:
    """Where each other rank last said it was."""
    rank, size = world()
    return {other: p for other in range(size) if other != rank and (p := BOARD.get(f"phase/{other}"))}
