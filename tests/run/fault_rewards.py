"""A reward function for tests/run/test_rank_failures.py: scores 0, and at one call on one rank
(`CLIPO_TEST_FAULT=<rank>:<call>:<sigterm|raise>`) signals its own process or raises."""

import os
import signal

CALLS = {"count": 0}


def faulty(prompts, completions, **kwargs):
    CALLS["count"] += 1
    rank, call, action = (os.environ.get("CLIPO_TEST_FAULT") or "-1:0:none").split(":")
    if int(os.environ.get("LOCAL_RANK", "0")) == int(rank) and CALLS["count"] == int(call):
        if action == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)  # only this rank hears it
        elif action == "raise":
            raise ValueError(f"reward exploded on rank {rank}")
    return [0.0] * len(completions)
