"""Stop signals recorded instead of killing the process, and a stop that cannot wait forever.

`StopSignals` records SIGTERM, SIGINT or SIGUSR1 (the training loop stops at the step's end,
`clipo.run.signals`); a second one raises `ForcedStop` in the main thread. Behind it, a watchdog thread:

Python runs a signal handler on the main thread, between two bytecodes: a main thread blocked
inside a collective (gloo waiting on a rank that never comes) never runs it, so a stop signal
would wait for a step that never ends. `signal.set_wakeup_fd` makes the interpreter's C-level
handler also write each signal's number to a socket at once, whatever the main thread is doing;
this thread reads them:

- the first stop signal gives the step `grace_s` seconds to end (then the stop's own checkpoint
  is written and the process exits by itself);
- a second stop signal gives the main thread `FORCE_AFTER_S` to leave on its own (it raises
  `ForcedStop` there when it can run Python);

past either, the run ends here with `os._exit(128 + the first signal)`: the last checkpoint
written stays (checkpoints are written atomically, a partial one is never taken for one).
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import sys
import threading
import time
from typing import Any, Callable

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
# seconds the main thread gets to leave by itself after a second stop signal
FORCE_AFTER_S = 3.0


class ForcedStop(KeyboardInterrupt):
    """A second stop signal: leave at once (Lightning treats it as Ctrl-C). A `KeyboardInterrupt` that is
    not one of these came from the program itself (e.g. a reward function), not from the user."""


_AT_FORK = {"registered": False}


def _forget_wakeup_fd_in_forked_children() -> None:
    """A process forked from this one (vLLM's engine, a data loader worker) would write its own signals to the
    parent's wakeup socket, which the watchdog would count as stops of the run: it drops the socket first."""

    def forget() -> None:
        try:
            signal.set_wakeup_fd(-1)
        except ValueError:  # forked from another thread than the main one
            pass

    if not _AT_FORK["registered"]:
        os.register_at_fork(after_in_child=forget)
        _AT_FORK["registered"] = True


class StopWatchdog:
    """Counts stop signals as they arrive (see the module docstring) and ends the process when a stop
    takes too long. `on_force` runs first (e.g. to write an interrupted summary), errors ignored."""

    def __init__(self, signals: tuple[int, ...], grace_s: float | None,
                 on_force: Callable[[int], None] | None = None) -> None:
        self.signals, self.grace_s, self.on_force = {int(s) for s in signals}, grace_s, on_force
        self.first: int | None = None  # the first stop signal this thread saw
        self._reader, self._writer = socket.socketpair()
        self._writer.setblocking(False)  # the C handler must never block
        self._previous_fd = -1
        self._thread = threading.Thread(target=self._watch, name="clipo-stop-watchdog", daemon=True)

    def start(self) -> None:
        """Install the wakeup socket (main thread only) and start watching."""
        _forget_wakeup_fd_in_forked_children()
        self._previous_fd = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        self._thread.start()

    def close(self) -> None:
        """Put the previous wakeup fd back and end the thread."""
        signal.set_wakeup_fd(self._previous_fd)
        self._writer.close()  # the thread reads end-of-file and returns
        self._thread.join(timeout=5)
        self._reader.close()

    def _watch(self) -> None:
        deadline: float | None = None
        seen = 0
        while True:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([self._reader], [], [], wait)
            if not ready:
                self._force(seen)
                return
            data = self._reader.recv(64)
            if not data:  # closed: the run is over
                return
            for signum in data:
                if signum not in self.signals:
                    continue
                seen += 1
                if self.first is None:
                    self.first = signum
                after = self.grace_s if seen == 1 else FORCE_AFTER_S
                if after is not None:
                    end = time.monotonic() + after
                    deadline = end if deadline is None else min(deadline, end)

    def _force(self, seen: int) -> None:
        code = 128 + (self.first or signal.SIGTERM)
        why = (f"a second stop signal, and the run did not end within {FORCE_AFTER_S:g} s" if seen > 1 else
               f"the current step did not end within signals.grace_s={self.grace_s:g} s of "
               f"{signal.Signals(self.first or signal.SIGTERM).name}")
        log.error("%s: exiting now (exit code %d) without finishing the step; the last checkpoint written stays",
                  why, code)
        if self.on_force is not None:
            try:
                self.on_force(code)
            except Exception as error:  # noqa: BLE001 - leaving matters more than the summary
                log.error("could not record the forced stop: %s", error)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(code)


class StopSignals:
    """While entered, the stop signals are recorded instead of killing the process (`signum`); a second one
    raises `ForcedStop` at once (`forced`). A watchdog thread (`clipo.run.stop_signals`) ends the process when
    the stop takes longer than `grace_s` seconds (None: no limit), or a second signal is not acted on;
    `on_force(exit_code)` runs before it does."""

    def __init__(self, grace_s: float | None = None, on_force: Callable[[int], None] | None = None) -> None:
        self.signum: int | None = None
        self.forced = False
        self.grace_s, self.on_force = grace_s, on_force
        self._previous: dict[int, Any] = {}
        self._watchdog: StopWatchdog | None = None

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # signal.signal works there only
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
            self._watchdog = StopWatchdog(STOP_SIGNALS, self.grace_s, lambda code: self._forced_exit(code))
            self._watchdog.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._watchdog is not None:
            self._watchdog.close()
            self._watchdog = None
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _forced_exit(self, code: int) -> None:
        if self.on_force is not None:
            self.on_force(code)

    def install(self) -> None:
        """Make clipo's handler the one for every stop signal again (Lightning replaces SIGTERM's at the start
        of fit and validate, see the module docstring)."""
        if self._previous and threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            self.forced = True
            raise ForcedStop
        self.signum = signum
        log.warning("received %s: finishing the current step, then writing a checkpoint (a second signal stops "
                    "at once)", signal.Signals(signum).name)

    @property
    def name(self) -> str | None:
        return signal.Signals(self.signum).name if self.signum is not None else None

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGTERM)
