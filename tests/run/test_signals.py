"""StopSignals records a stop signal instead of dying; a second one raises at once; handlers come back; a stop
that the main thread cannot act on (stuck inside a C call) still ends the process after the grace period.
(The end-to-end runs, exit statuses and resumes are in tests/run/test_checkpointing.py.)"""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from clipo.run.signals import interrupted_line
from clipo.run.stop_signals import ForcedStop, StopSignals


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1])
def test_a_stop_signal_is_recorded_and_the_process_lives(signum):
    before = signal.getsignal(signum)
    with StopSignals() as stop:
        os.kill(os.getpid(), signum)  # default action: SIGTERM/SIGUSR1 end the process, SIGINT raises
    assert stop.signum == signum and stop.exit_code == 128 + signum and not stop.forced
    assert stop.name == signal.Signals(signum).name
    assert signal.getsignal(signum) is before
    assert signal.set_wakeup_fd(-1) == -1  # the watchdog's wakeup socket is gone again


@pytest.mark.parametrize("second", [signal.SIGINT, signal.SIGTERM])
def test_a_second_stop_signal_raises_at_once(second):
    # before: a second SIGTERM was ignored until the step ended
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        with pytest.raises(ForcedStop):
            os.kill(os.getpid(), second)
    assert stop.forced and stop.exit_code == 128 + signal.SIGTERM
    assert issubclass(ForcedStop, KeyboardInterrupt)  # Lightning's Ctrl-C path ends the fit at once


STUCK = textwrap.dedent("""
    import datetime, sys, time
    import torch.distributed as dist
    from clipo.run.stop_signals import StopSignals

    def on_force(code):
        open(sys.argv[1], "w").write(str(code))

    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    with StopSignals(grace_s=float(sys.argv[2]), on_force=on_force):
        print("ready", flush=True)
        store.wait(["never set"], datetime.timedelta(seconds=60))  # blocked in C++: no Python handler runs
    print("the wait returned", flush=True)
""")


@pytest.mark.parametrize("signals_sent, grace_s", [(1, 1.0), (2, 60.0)])
def test_a_stop_ends_the_process_when_the_main_thread_is_stuck(tmp_path, signals_sent, grace_s):
    """The main thread blocked inside a C++ wait (as in a collective waiting on a rank that never comes) never
    runs Python's handler: the watchdog ends the process after the grace period, or at once after a second
    signal (its short wait for the main thread aside). Before: SIGTERM was ignored until the wait returned."""
    marker = tmp_path / "forced"
    child = subprocess.Popen([sys.executable, "-c", STUCK, str(marker), str(grace_s)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        time.sleep(0.2)  # inside the wait
        sent = time.monotonic()
        for _ in range(signals_sent):
            child.send_signal(signal.SIGTERM)
            time.sleep(0.1)
        code = child.wait(timeout=30)
        took = time.monotonic() - sent
    finally:
        child.kill()
    assert code == 128 + signal.SIGTERM and marker.read_text() == "143"
    assert "the wait returned" not in child.stdout.read()
    from clipo.run.stop_signals import FORCE_AFTER_S

    limit = grace_s if signals_sent == 1 else FORCE_AFTER_S
    assert limit - 0.5 < took < limit + 5, took


def test_the_interrupted_line_offers_only_what_exists():
    # before: "continue with ckpt_path=" (empty) after a stop during the first validation
    with_checkpoint = interrupted_line("SIGTERM", 3, "/run/checkpoints/last.ckpt", None, "/run")
    assert with_checkpoint.endswith("continue with hydra.run.dir=/run ckpt_path=last")
    fresh = interrupted_line("SIGTERM", 0, None, None, "/run")
    assert "nothing to keep; start the run again" in fresh and "ckpt_path" not in fresh

    class Resumed:
        path = "/old/checkpoints/step_000004.ckpt"

    resumed = interrupted_line("SIGINT", 4, None, Resumed(), "/run")
    assert resumed.endswith("continue with ckpt_path=/old/checkpoints/step_000004.ckpt")


def test_a_forked_child_signals_do_not_reach_the_parents_watchdog():
    """A child forked during a run (vLLM's engine, a data loader worker) inherits the wakeup socket; its own
    signals must not count as stops of the run."""
    with StopSignals(grace_s=0.5) as stop:
        pid = os.fork()
        if pid == 0:  # the child signals itself, then leaves
            signal.signal(signal.SIGTERM, lambda *args: None)
            os.kill(os.getpid(), signal.SIGTERM)
            os._exit(0)
        os.waitpid(pid, 0)
        time.sleep(1.0)  # past the grace: the parent would have been ended here
    assert stop.signum is None
