"""StopSignals records a stop signal instead of dying; a second Ctrl-C raises at once; handlers come back.
(The end-to-end runs, exit statuses and resumes are in tests/run/test_checkpointing.py.)"""

import os
import signal

import pytest

from clipo.run.signals import StopSignals


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1])
def test_a_stop_signal_is_recorded_and_the_process_lives(signum):
    before = signal.getsignal(signum)
    with StopSignals() as stop:
        os.kill(os.getpid(), signum)  # default action: SIGTERM/SIGUSR1 end the process, SIGINT raises
        os.kill(os.getpid(), signal.SIGTERM)  # a later, different signal does not replace the first
    assert stop.signum == signum and stop.exit_code == 128 + signum and not stop.forced
    assert stop.name == signal.Signals(signum).name
    assert signal.getsignal(signum) is before


def test_a_second_ctrl_c_raises_at_once():
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert stop.forced and stop.exit_code == 130
