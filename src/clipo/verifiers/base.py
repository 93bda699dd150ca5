"""What every verifier shares: batch scoring, the lazily started worker pool, counters, cleanup.

A subclass decides each (response, ground truth) pair cheaply in the trainer's process
when it can (`_precheck` returns a score) and otherwise returns the arguments of a
task for the worker pool, where anything that touches sympy/math-verify runs under a
hard time limit. A task that times out or crashes scores 0 and is counted.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import Counter
from collections.abc import Sequence
from typing import Any

from clipo.verifiers.pool import WorkerPool
from clipo.verifiers.text import DEFAULT_TAIL_CHARS


def default_num_workers() -> int:
    return min(2, os.cpu_count() or 1)


def _close_pool(holder: dict) -> None:
    if holder.get("pool") is not None:
        holder.pop("pool").close()


class Verifier:
    """Base verifier: `verifier(responses, ground_truths) -> list[float]` (1.0 correct, 0.0 not).

    Args:
        timeout: hard limit in seconds for one check in a worker process.
        num_workers: worker processes (default min(2, cpu count)); started on first use.
        fallback: what to read when a response has no `\\boxed{}`, one of the class's `fallbacks`.
        tail_chars: only the last `tail_chars` characters of a response are read (at least 64).
    """

    task_fn: str | None = None  # "module:function" the workers run (None: never needs a worker)
    fallbacks: tuple[str, ...] = ("none",)  # the subclass's ways to read an unboxed answer

    def __init__(
        self, timeout: float = 5.0, num_workers: int | None = None, fallback: str = "none",
        tail_chars: int = DEFAULT_TAIL_CHARS,
    ) -> None:
        if fallback not in self.fallbacks:
            raise ValueError(f"fallback must be one of {self.fallbacks}, got {fallback!r}")
        if tail_chars < 64:
            raise ValueError(f"tail_chars must be >= 64, got {tail_chars}")
        self.fallback, self.tail_chars = fallback, int(tail_chars)
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        self.timeout = float(timeout)
        self.num_workers = default_num_workers() if num_workers is None else int(num_workers)
        if self.num_workers < 1:
            raise ValueError(f"num_workers must be >= 1 (or None for the default), got {num_workers}")
        self._counts: Counter[str] = Counter({k: 0 for k in ("checked", "fast_path", "pooled", "rejected",
                                                               "timeouts", "errors")})
        self._lock = threading.Lock()
        self._pool_holder: dict = {}  # shared with the finalizer, which must not hold `self`
        self._finalizer = weakref.finalize(self, _close_pool, self._pool_holder)

    def _precheck(self, response: str, ground_truth: str) -> float | tuple:
        """A score decided here, or the argument tuple of a worker task."""
        raise NotImplementedError

    def validate_ground_truth(self, ground_truth: str) -> None:
        """Raise ValueError (saying what is wrong) when `ground_truth` cannot be parsed."""
        raise NotImplementedError

    def __call__(self, responses: Sequence[str], ground_truths: Sequence[str]) -> list[float]:
        if len(responses) != len(ground_truths):
            raise ValueError(f"got {len(responses)} responses but {len(ground_truths)} ground truths; "
                             "pass one ground truth per response (repeat it for each sample of a prompt)")
        with self._lock:
            scores, tasks, slots = [0.0] * len(responses), [], []
            for i, (response, truth) in enumerate(zip(responses, ground_truths, strict=True)):
                if truth is None or not str(truth).strip():  # nothing to be right against: never correct
                    self._counts["rejected"] += 1
                    continue
                decided = self._precheck(str(response), str(truth))
                if isinstance(decided, tuple):
                    tasks.append(decided)
                    slots.append(i)
                else:
                    scores[i] = float(decided)
            # A ground truth's checks go out together, so one worker parses it once (its cache).
            order = sorted(range(len(tasks)), key=lambda k: str(ground_truths[slots[k]]))
            results = self._run([tasks[k] for k in order])
            for i, (status, value) in zip((slots[k] for k in order), results, strict=True):
                if status != "ok":
                    self._counts["timeouts" if status == "timeout" else "errors"] += 1
                scores[i] = 1.0 if status == "ok" and value else 0.0
            self._counts["checked"] += len(responses)
            self._counts["pooled"] += len(tasks)
            return scores

    def _run(self, tasks: list[tuple]) -> list[tuple[str, Any]]:
        if not tasks:
            return []
        if self._pool_holder.get("pool") is None:
            self._pool_holder["pool"] = WorkerPool(type(self).task_fn, self.num_workers, self.timeout)
        return self._pool_holder["pool"].map(tasks)

    def ground_truth_problems(self, ground_truths: Sequence[str | None]) -> list[str | None]:
        """For each ground truth, why this verifier cannot score against it (None when it can): a null
        or empty one, or one the verifier cannot parse. Training (`clipo.data.checks`) and evaluation
        both check their sets with it before a model loads."""
        problems: list[str | None] = [None] * len(ground_truths)
        present = [i for i, truth in enumerate(ground_truths) if truth is not None and str(truth).strip()]
        for i in set(range(len(ground_truths))) - set(present):
            problems[i] = "the ground truth is null" if ground_truths[i] is None else "the ground truth is empty"
        for i, problem in zip(present, self._gold_problems([str(ground_truths[i]) for i in present]), strict=True):
            problems[i] = problem
        return problems

    def _gold_problems(self, ground_truths: Sequence[str]) -> list[str | None]:
        """For each (non-empty) ground truth, why it cannot be parsed (None when it can)."""
        problems = []
        for truth in ground_truths:
            try:
                self.validate_ground_truth(truth)
                problems.append(None)
            except ValueError as exc:
                problems.append(str(exc))
        return problems

    def validate_ground_truths(self, ground_truths: Sequence[str], sources: Sequence[str] | None = None,
                               rows: Sequence[int] | None = None) -> None:
        """Raise one ValueError naming the data source and row of the first unparsable ground truth."""
        problems = self.ground_truth_problems(list(ground_truths))
        bad = [i for i, problem in enumerate(problems) if problem is not None]
        if bad:
            first = bad[0]
            source = sources[first] if sources is not None else "<unknown source>"
            row = rows[first] if rows is not None else first
            raise ValueError(f"{len(bad)} of {len(problems)} ground truths cannot be parsed by the "
                             f"{type(self).__name__}; first: data source {source!r}, row {row}: "
                             f"{problems[first]}. Fix the data or choose another verifier.")

    def stats(self) -> dict[str, int]:
        """Counters since construction: checked, fast_path, pooled, rejected, timeouts, errors."""
        return dict(self._counts)

    def close(self) -> None:
        """Shut the worker pool down (a later call starts a new one)."""
        with self._lock:
            _close_pool(self._pool_holder)

    def __enter__(self) -> Verifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict:
        # Worker processes do not travel: a copy (e.g. a spawned DDP rank) starts its own pool.
        return {k: v for k, v in self.__dict__.items() if k not in ("_lock", "_pool_holder", "_finalizer")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._pool_holder = {}
        self._finalizer = weakref.finalize(self, _close_pool, self._pool_holder)
