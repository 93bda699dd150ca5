"""The worker pool: checks travel in chunks to long-lived workers, and the time limit still holds per check."""

from __future__ import annotations

import time

from clipo.verifiers import MathVerifier
from clipo.verifiers.pool import WorkerPool


class _CountingChannel:
    """Wraps a worker's send channel and counts the messages sent through it."""

    def __init__(self, channel) -> None:
        self.channel, self.messages = channel, 0

    def send(self, message) -> None:
        self.messages += 1
        self.channel.send(message)

    def close(self) -> None:
        self.channel.close()


def test_many_checks_share_one_message_and_one_process():
    pool = WorkerPool("os:getpid", num_workers=1, timeout=5.0)
    try:
        pool.map([()])  # started and ready
        channel = pool._workers[0].send_conn = _CountingChannel(pool._workers[0].send_conn)
        results = pool.map([()] * 64)
        assert {status for status, _ in results} == {"ok"}
        assert len({pid for _, pid in results}) == 1  # no process per check
        assert channel.messages <= 8  # 64 checks in chunks, not 64 requests
    finally:
        pool.close()


def test_time_limit_is_per_check_not_per_chunk():
    # four 0.4 s checks in one chunk take 1.6 s together, over the 1 s limit; none alone is
    pool = WorkerPool("time:sleep", num_workers=1, timeout=1.0)
    try:
        pool.map([(0.0,)])
        assert pool.map([(0.4,)] * 4) == [("ok", None)] * 4
    finally:
        pool.close()


def test_one_slow_check_times_out_alone_and_the_rest_of_its_chunk_runs():
    pool = WorkerPool("time:sleep", num_workers=1, timeout=1.0)
    try:
        pool.map([(0.0,)])
        first_pid = pool._workers[0].process.pid
        tasks = [(0.0,)] * 3 + [(60.0,)] + [(0.0,)] * 4
        start = time.monotonic()
        results = pool.map(tasks)
        assert time.monotonic() - start < 30.0  # the 60 s check was cut at its limit
        assert results == [("ok", None)] * 3 + [("timeout", None)] + [("ok", None)] * 4
        assert pool._workers[0].process.pid != first_pid  # the overrunning worker was replaced
    finally:
        pool.close()


def test_verifier_batch_with_a_timeout_keeps_every_other_score():
    # sqrt(2)^(sqrt(2)^1000) passes the prefilter (no plain-number tower) but keeps sympy busy past a 1 s limit (see test_hostile)
    with MathVerifier(timeout=1.0, num_workers=1) as verifier:
        assert verifier(["\\boxed{2}"], ["\\frac{4}{2}"]) == [1.0]
        right = ["so $x = \\frac{1}{2}$", "The answer is $\\sqrt{4}$.", "We get 0.25"]
        responses = right * 3 + ["\\boxed{\\sqrt{2}^{\\sqrt{2}^{1000}}}"] + right * 3
        truths = ["0.5", "2", "\\frac{1}{4}"] * 3 + ["\\sqrt{2}"] + ["0.5", "2", "\\frac{1}{4}"] * 3
        assert verifier(responses, truths) == [1.0] * 9 + [0.0] + [1.0] * 9
        assert verifier.stats()["timeouts"] == 1
