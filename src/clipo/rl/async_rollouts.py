"""The asynchronous rollout pipeline (`rollout.max_staleness=k`, k >= 1), wrapped around the collector.

    step t: rollouts of batch t (sampled ahead by policy version t-1, or sampled now) -> batches t+1..t+k
            handed to the sampling thread -> the collector's passes, shaping, advantages -> update t ->
            push version t+1 (after the thread's current batch) -> step t+1 ...

So the next step's rollouts are sampled while the current update runs (on another core or device: the
`vllm_server` engine, or the colocated `vllm` engine in a thread). Each rollout carries the version of the
policy that sampled it (`RolloutBatch.versions`, from the engine); a batch is handed out only up to k steps
ahead, and one older than k versions is never used (it is sampled again now). The update's importance
correction (`rollout.importance_sampling.*`) is taken against the sampler's log-probs, so it corrects for
the staleness as for the engine's rounding. Each step logs `async/staleness_mean`, `async/staleness_max`,
`async/wait_s` (seconds the step waited for its rollouts) and `async/sample_s` (the sampling's own seconds).

Only generation runs ahead: scoring, the log-prob passes, CLIPO's head and the advantages run in the step,
in order, as in the synchronous step. The batch of a future step is the one the train loader will hand out
then (`PromptDataModule.upcoming_batch`), its request seeds drawn in the training thread at submission, so
a run is reproducible by seed. A checkpoint keeps no rollout in flight: a resumed run samples its first
step now, with the resumed weights, and goes on ahead from there (staleness 0 for that step).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Callable

import torch

from clipo.rl.collector import RolloutCollector, Trajectory
from clipo.rollout.batch import RolloutBatch
from clipo.rollout.sampling import Sampling
from clipo.run.timing import PhaseTimer

ASYNC_ENGINES = ("vllm", "vllm_server")  # engines with their own copy of the weights and versions


class LockedEngine:
    """An engine whose calls take turns: the sampling thread's batch, and the training thread's pushes,
    validation and refills (an in-process vLLM engine is not thread-safe; a push waits for the batch)."""

    def __init__(self, engine: Any) -> None:
        self.engine, self.lock = engine, threading.Lock()
        self.gives_hidden_states = engine.gives_hidden_states
        self.gives_sampling_logprobs = engine.gives_sampling_logprobs

    def generate(self, records: list[dict], group_size: int, sampling: Sampling,
                 hidden_layer: int | None = None) -> RolloutBatch:
        with self.lock:
            return self.engine.generate(records, group_size, sampling, hidden_layer)

    def sync_weights(self, policy: torch.nn.Module) -> None:
        """The new version, pushed now from the training thread (sharded weights gather collectively)."""
        with self.lock:
            self.engine.sync_weights(policy)
            self.engine.push_weights()

    @property
    def version(self) -> int:
        return self.engine.version


@dataclasses.dataclass
class Ahead:
    """A batch handed to the sampling thread: its records and the future (rollouts, seconds)."""

    records: list[dict]
    future: Future


class AsyncRollouts:
    """`RolloutCollector`'s interface (`collect`, `sync_weights`, `close`) with generation running ahead.

    Args:
        collector: the synchronous collector (its engine a `LockedEngine`).
        max_staleness: k, the most policy versions a used rollout may lag the policy it trains (0: none run
            ahead, every step samples now: the synchronous step).
    """

    def __init__(self, collector: RolloutCollector, max_staleness: int) -> None:
        self.collector, self.max_staleness = collector, max_staleness
        self.engine = collector.engine
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clipo-rollouts")
        self.ahead: dict[int, Ahead] = {}  # by steps ahead of the current one (1..k)

    def collect(self, records: list[dict], step: int, refill: Callable[[], list[dict]], timer: PhaseTimer,
                generation_context: Callable[[], AbstractContextManager] = nullcontext,
                trainer_state: Any = None) -> Trajectory:  # fmt: skip
        """The collector's trajectory of `records`, from rollouts sampled ahead when there are any."""
        start = time.perf_counter()
        rollouts, sample_s = self._take(records)
        wait_s = time.perf_counter() - start
        if rollouts is None:
            with timer("generate"), generation_context():
                rollouts = self.engine.generate(records, self.collector.group_size, self.collector.sampling,
                                                self.collector.capture_layer)  # fmt: skip
            wait_s = sample_s = time.perf_counter() - start
        else:
            timer.seconds["generate"] += wait_s
            timer.sampling_seconds = sample_s
        self._hand_out(trainer_state)
        trajectory = self.collector.collect(records, step, refill, timer, generation_context, trainer_state,
                                            sampled=rollouts)  # fmt: skip
        trajectory.metrics.update(staleness_metrics(trajectory.rollouts.versions, self.engine, wait_s, sample_s))
        return trajectory

    def sync_weights(self, policy: torch.nn.Module) -> None:
        self.engine.sync_weights(policy)

    def close(self) -> None:
        """Drop the batches ahead (a finished step never needs them) and stop the thread; then the collector."""
        for ahead in self.ahead.values():
            ahead.future.cancel()
        self.pool.shutdown(wait=True)
        self.collector.close()

    def _take(self, records: list[dict]) -> tuple[RolloutBatch | None, float]:
        """This step's rollouts sampled ahead (waiting for them) and their seconds; (None, 0) when there are
        none, they answer other records, or they are older than `max_staleness` versions."""
        self.ahead = {steps - 1: ahead for steps, ahead in self.ahead.items()}
        mine = self.ahead.pop(0, None)
        if mine is None:
            return None, 0.0
        rollouts, seconds = mine.future.result()  # a server error surfaces here, naming the server
        too_old = self.engine.version - int(rollouts.versions.min()) > self.max_staleness
        return (None, 0.0) if mine.records != records or too_old else (rollouts, seconds)

    def _hand_out(self, trainer_state: Any) -> None:
        """Hand the batches of the next `max_staleness` steps to the sampling thread (those not handed yet)."""
        for steps in range(1, self.max_staleness + 1):
            if steps in self.ahead:
                continue
            records = trainer_state.datamodule.upcoming_batch(steps)
            seed = int(torch.randint(0, 2**31 - 1, ()))  # drawn here, in order: the run stays reproducible
            sampling = dataclasses.replace(self.collector.sampling, seed=seed)
            self.ahead[steps] = Ahead(records, self.pool.submit(self._sample, records, sampling))

    def _sample(self, records: list[dict], sampling: Sampling) -> tuple[RolloutBatch, float]:
        start = time.perf_counter()
        rollouts = self.engine.generate(records, self.collector.group_size, sampling, self.collector.capture_layer)
        return rollouts, time.perf_counter() - start


def staleness_metrics(versions: torch.Tensor | None, engine: Any, wait_s: float, sample_s: float) -> dict:
    """`async/*` of one step: how many versions its rollouts lag the policy they train (`engine.version`; mean,
    max; 0 for an engine that samples from the policy itself, whose rollouts carry no version), the seconds
    it waited for them and the seconds their sampling took."""
    lag = (engine.version - versions).float() if versions is not None else torch.zeros(1)
    return {"async/staleness_mean": lag.mean(), "async/staleness_max": lag.max(),
            "async/wait_s": torch.tensor(wait_s), "async/sample_s": torch.tensor(sample_s)}  # fmt: skip


def async_problem(max_staleness: Any, engine: str) -> str | None:
    """Why `rollout.max_staleness` cannot run with `rollout.engine` (None when it can)."""
    if isinstance(max_staleness, bool) or not isinstance(max_staleness, int) or max_staleness < 0:
        return f"rollout.max_staleness={max_staleness!r}: give a whole number >= 0 (0: the synchronous step)"
    if max_staleness and engine not in ASYNC_ENGINES:
        return (f"rollout.max_staleness={max_staleness} samples while the policy updates, which needs an engine with "
                f"its own copy of the weights: rollout.engine=vllm_server or vllm, not {engine}")
    return None


def async_engine(max_staleness: int, engine: Any) -> Any:
    """The engine every part samples with: taking turns with the sampling thread when the pipeline runs."""
    return LockedEngine(engine) if max_staleness else engine


def async_collector(max_staleness: int, collector: RolloutCollector) -> RolloutCollector | AsyncRollouts:
    """The collector, wrapped in the pipeline when `rollout.max_staleness` >= 1 (0: today's synchronous step)."""
    return AsyncRollouts(collector, max_staleness) if max_staleness else collector
