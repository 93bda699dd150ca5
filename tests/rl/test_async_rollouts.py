"""The asynchronous rollout pipeline (`rollout.max_staleness`) around the collector, on the tiny model without
vLLM: with k=0 it is the synchronous step (same rollouts, rewards and advantages as the plain collector); with
k=1 the next step's batch (the one the loader hands out next) is sampled in the sampling thread during the
"update", carries the version that sampled it, lags by one and is reproducible; a batch that answers other
prompts or lags more than k is sampled again. A stand-in engine samples with hf and keeps a version count as
the vLLM engines do (each `sync_weights` is a new version)."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest
import torch

from clipo.builders import build_module
from clipo.data.arith import ArithDataset
from clipo.rl.async_rollouts import AsyncRollouts, LockedEngine, async_problem
from clipo.run.timing import PhaseTimer
from tests.conftest import TINY_OVERRIDES, compose_config

BATCHES = [ArithDataset(size=4, seed=s).records[:2] for s in range(4)]  # the loader's batches, step by step


class VersionedEngine:
    """Samples like the hf engine `inner`; each rollout carries the engine's version, as the vLLM engines'."""

    def __init__(self, inner):
        self.inner, self.version, self.pushes, self.threads = inner, 0, 0, []
        self.gives_hidden_states, self.gives_sampling_logprobs = inner.gives_hidden_states, inner.gives_sampling_logprobs

    def generate(self, records, group_size, sampling, hidden_layer=None):
        self.threads.append(threading.current_thread().name)
        batch = self.inner.generate(records, group_size, sampling, hidden_layer)
        batch.versions = torch.full((len(batch.responses),), self.version)
        return batch

    def sync_weights(self, policy):
        self.version += 1

    def push_weights(self):
        self.pushes += 1


class Loader:
    """The datamodule's `upcoming_batch` at step `step` (what `trainer_state.datamodule` gives the pipeline)."""

    def __init__(self):
        self.step = 0

    def upcoming_batch(self, ahead):
        return BATCHES[self.step + ahead]


def _collector(tmp_path):
    module = build_module(compose_config(TINY_OVERRIDES, output_dir=tmp_path))
    return module.collector


def _collect(collector, step, loader):
    loader.step = step
    return collector.collect(BATCHES[step], step, lambda: BATCHES[0], PhaseTimer(),
                             trainer_state=SimpleNamespace(datamodule=loader))


def test_max_staleness_zero_is_the_synchronous_step(tmp_path):
    plain, wrapped = _collector(tmp_path / "a"), _collector(tmp_path / "b")
    pipeline = AsyncRollouts(wrapped, max_staleness=0)
    torch.manual_seed(7)
    expected = _collect(plain, 0, Loader())
    torch.manual_seed(7)
    got = _collect(pipeline, 0, Loader())
    assert torch.equal(got.rollouts.sequences, expected.rollouts.sequences)
    assert torch.equal(got.rewards, expected.rewards) and torch.equal(got.advantages, expected.advantages)
    assert got.metrics["async/staleness_max"] == 0 and got.metrics["async/wait_s"] > 0
    assert not pipeline.ahead  # nothing runs ahead
    pipeline.close()


def _run_async(tmp_path, steps=3):
    collector = _collector(tmp_path)
    engine = VersionedEngine(collector.engine)
    collector.engine = LockedEngine(engine)
    pipeline, loader = AsyncRollouts(collector, max_staleness=1), Loader()
    torch.manual_seed(3)
    trajectories = []
    for step in range(steps):
        trajectories.append(_collect(pipeline, step, loader))
        pipeline.sync_weights(None)  # after the update: version step + 1, pushed from this thread
    pipeline.close()
    return trajectories, engine


def test_max_staleness_one_samples_the_next_batch_ahead_with_the_version_before_the_update(tmp_path):
    trajectories, engine = _run_async(tmp_path / "a")
    lags = [(t.metrics["async/staleness_mean"].item(), t.metrics["async/staleness_max"].item()) for t in trajectories]
    assert lags == [(0, 0), (1, 1), (1, 1)]  # step 0 sampled now; then each batch by the policy one update older
    for step, trajectory in enumerate(trajectories):
        assert trajectory.rollouts.ground_truths == [r["ground_truth"] for r in BATCHES[step] for _ in range(4)]  # group_size 4
        assert set(trajectory.rollouts.versions.tolist()) == {max(step - 1, 0)}
    # the first batch in this thread, the next ones in the pipeline's (the one handed out after the last step
    # too, unless `close` cancelled it before it started)
    assert engine.threads[0] == threading.current_thread().name
    assert all(name.startswith("clipo-rollouts") for name in engine.threads[1:]) and len(engine.threads) in (3, 4)
    assert engine.pushes == 3  # every version pushed from this thread right after its update
    again, _ = _run_async(tmp_path / "b")  # the seeds of batches sampled ahead come from this thread's RNG, in order
    for a, b in zip(trajectories, again):
        assert torch.equal(a.rollouts.sequences, b.rollouts.sequences)


def test_a_batch_for_other_prompts_or_older_than_allowed_is_sampled_again(tmp_path):
    collector = _collector(tmp_path)
    engine = VersionedEngine(collector.engine)
    collector.engine = LockedEngine(engine)
    pipeline, loader = AsyncRollouts(collector, max_staleness=1), Loader()
    _collect(pipeline, 0, loader)
    pipeline.sync_weights(None)
    pipeline.sync_weights(None)  # two versions later: the batch sampled ahead (version 0) lags by 2 > 1
    assert _collect(pipeline, 1, loader).metrics["async/staleness_max"] == 0  # sampled again, now
    pipeline.sync_weights(None)
    loader.step = 2
    got = pipeline.collect(BATCHES[3], 2, lambda: BATCHES[0], PhaseTimer(),
                           trainer_state=SimpleNamespace(datamodule=loader))  # not the batch handed out for step 2
    assert got.rollouts.ground_truths[0] == BATCHES[3][0]["ground_truth"]
    assert got.metrics["async/staleness_max"] == 0
    pipeline.close()


@pytest.mark.parametrize(("k", "engine", "message"), [
    (1, "hf", "needs an engine with its own copy of the weights: rollout.engine=vllm_server or vllm, not hf"),
    (2, "auto", "not auto"), (-1, "vllm", "give a whole number >= 0"), (True, "vllm", "give a whole number"),
])  # fmt: skip
def test_staleness_settings_that_cannot_run_say_what_to_set(k, engine, message):
    assert message in async_problem(k, engine)
    assert async_problem(0, "hf") is None and async_problem(2, "vllm_server") is None
