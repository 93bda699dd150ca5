"""A pool of worker processes with a hard time limit per task, enforced from outside.

math-verify's own `signal.alarm` timeout works only on the main thread of the process
that calls it, and a check stuck in C code (a huge integer power) ignores Python-level
interrupts anyway. So every check runs in a worker process; a worker that overruns its
deadline is killed and replaced, and the task reports "timeout".

Workers are fresh interpreters (`python -c ...`, started with
`subprocess`, i.e. spawn semantics: never a `fork` of the trainer, which has torch and
its threads loaded). Unlike multiprocessing's `spawn`, this does not re-import the
caller's `__main__` in each worker, so a training script or notebook needs no
`if __name__ == "__main__"` guard and workers import only math-verify (~0.5 s to start).
Tasks and results travel as pickled messages over the worker's stdin/stdout pipes.

Workers stay alive between calls and take tasks in chunks (one message carries many
checks; results stream back one by one), so a cheap check costs no round trip of its
own. The time limit still holds per check: each result restarts the clock for the next
check of the chunk. A worker that overruns is killed and replaced; the check it was on
reports "timeout" and the rest of its chunk goes back to the queue, to run elsewhere.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import time
from collections import deque
from collections.abc import Sequence
from multiprocessing.connection import Connection, wait
from typing import Any

# How long a fresh worker may take to import its libraries before the pool gives up.
START_TIMEOUT_S = 120.0
# Checks in one message to a worker: a share of what is left (smaller near the end, so
# that all workers finish together), between MIN_CHUNK and MAX_CHUNK.
MIN_CHUNK, MAX_CHUNK = 4, 32
_WORKER_CMD = "from clipo.verifiers.pool import _worker_main; _worker_main()"


def _worker_main() -> None:
    """Runs in the worker: answer (index, "ok"|"error", payload) for each (index, args) received."""
    channel_out = Connection(os.dup(1), readable=False)
    os.dup2(2, 1)  # stray prints from libraries go to stderr, never into the channel
    channel_in = Connection(0, writable=False)
    module_name, _, name = sys.argv[1].partition(":")
    module = importlib.import_module(module_name)
    fn = getattr(module, name)
    if hasattr(module, "warm_up"):  # heavy imports before "ready", so they never eat a task's time
        module.warm_up()
    channel_out.send(("ready", None, None))
    while True:
        try:
            chunk = channel_in.recv()
        except (EOFError, OSError):
            return
        if chunk is None:
            return
        for index, args in chunk:
            try:
                channel_out.send((index, "ok", fn(*args)))
            except Exception as exc:  # a crash in one check must not end the worker
                channel_out.send((index, "error", f"{type(exc).__name__}: {exc}"[:300]))


class _Worker:
    def __init__(self, fn_path: str) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", _WORKER_CMD, fn_path],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True)
        self.send_conn = Connection(os.dup(self.process.stdin.fileno()), readable=False)
        self.conn = Connection(os.dup(self.process.stdout.fileno()), writable=False)
        self.process.stdin.close()
        self.process.stdout.close()
        self.started = time.monotonic()
        self.ready = False
        self.chunk: deque[int] = deque()  # indices sent and not yet answered, in order
        self.deadline = 0.0  # when the check at chunk[0] must be answered

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.process.kill()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass  # SIGKILLed, so it will end; on a loaded machine that took over 5 s once
        self.send_conn.close()
        self.conn.close()


class WorkerPool:
    """`num_workers` worker processes that run `fn(*args)` for each task with a hard time limit.

    Args:
        fn_path: "package.module:function", imported by each worker.
        num_workers: processes to keep running.
        timeout: seconds one task may take before its worker is killed and replaced.
    """

    def __init__(self, fn_path: str, num_workers: int, timeout: float) -> None:
        if num_workers < 1 or timeout <= 0:
            raise ValueError(f"need num_workers >= 1 and timeout > 0, got {num_workers} and {timeout}")
        self._fn_path, self.timeout = fn_path, timeout
        self._workers = [_Worker(fn_path) for _ in range(num_workers)]

    def map(self, tasks: Sequence[tuple]) -> list[tuple[str, Any]]:
        """Run every task; each result is ("ok", value), ("error", message) or ("timeout", None)."""
        pending = deque(range(len(tasks)))
        results: list[tuple[str, Any] | None] = [None] * len(tasks)
        while pending or any(w.chunk for w in self._workers):
            for worker in self._workers:
                if worker.ready and not worker.chunk and pending:
                    size = min(MAX_CHUNK, max(MIN_CHUNK, -(-len(pending) // (2 * len(self._workers)))), len(pending))
                    chunk = [pending.popleft() for _ in range(size)]
                    try:
                        worker.send_conn.send([(index, tasks[index]) for index in chunk])
                    except OSError:  # the worker just died; _reap replaces it
                        pending.extendleft(reversed(chunk))
                        continue
                    worker.chunk.extend(chunk)
                    worker.deadline = time.monotonic() + self.timeout
            wait([w.conn for w in self._workers], timeout=max(self._next_deadline() - time.monotonic(), 0.0))
            self._collect(results)
            self._reap(results, pending)
        return results  # type: ignore[return-value]

    def _next_deadline(self) -> float:
        deadlines = [w.deadline for w in self._workers if w.chunk]
        deadlines += [w.started + START_TIMEOUT_S for w in self._workers if not w.ready]
        return min(deadlines, default=time.monotonic() + 1.0)

    def _collect(self, results: list) -> None:
        for worker in self._workers:
            while worker.conn.poll():
                try:
                    index, status, payload = worker.conn.recv()
                except (EOFError, OSError):
                    break  # the worker died; _reap replaces it
                if index == "ready":
                    worker.ready = True
                elif worker.chunk and worker.chunk[0] == index:
                    results[index] = (status, payload)
                    worker.chunk.popleft()
                    worker.deadline = time.monotonic() + self.timeout  # the next check starts now

    def _reap(self, results: list, pending: deque[int]) -> None:
        """Kill and replace workers that overran, died, or never started; requeue their unstarted checks."""
        now = time.monotonic()
        for slot, worker in enumerate(self._workers):
            overran = bool(worker.chunk) and now > worker.deadline
            died = not worker.alive()
            if not worker.ready and (died or now > worker.started + START_TIMEOUT_S):
                self.close()
                raise RuntimeError(f"a verifier worker ({self._fn_path}) failed to start within "
                                   f"{START_TIMEOUT_S:.0f} s; run `python -c '{_WORKER_CMD}' {self._fn_path}` "
                                   "to see its error (is math-verify installed?)")
            if overran or died:
                if worker.chunk:
                    current = worker.chunk.popleft()
                    results[current] = ("timeout", None) if overran else ("error", "worker process died")
                    pending.extendleft(reversed(worker.chunk))
                worker.kill()
                self._workers[slot] = _Worker(self._fn_path)

    def close(self) -> None:
        """Ask workers to exit, then kill any that do not within a second."""
        for worker in self._workers:
            try:
                worker.send_conn.send(None)
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + 1.0
        for worker in self._workers:
            try:
                worker.process.wait(timeout=max(deadline - time.monotonic(), 0.01))
            except subprocess.TimeoutExpired:
                pass
            worker.kill()
        self._workers = []

