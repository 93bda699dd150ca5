"""Wall-clock seconds per phase of an RL step, and the tokens generated in it; each phase is also what this
rank says it is doing (`clipo.run.ranks`: a failure or a timed-out collective names it)."""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager

from clipo.run import ranks


class PhaseTimer:
    """Wall-clock seconds per named phase of a step, and the tokens generated in it."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.generated_tokens = 0
        # the sampler's own seconds when rollouts were sampled ahead, off the step's path (the asynchronous
        # pipeline: its "generate" phase is then only the wait); None: the "generate" phase's
        self.sampling_seconds: float | None = None

    @property
    def generation_seconds(self) -> float:
        """Seconds the step's rollouts took to sample (tokens per second divide by it)."""
        return self.seconds["generate"] if self.sampling_seconds is None else self.sampling_seconds

    @contextmanager
    def __call__(self, phase: str):
        start = time.perf_counter()
        with ranks.phase(phase):
            yield
        self.seconds[phase] += time.perf_counter() - start
