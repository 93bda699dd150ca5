"""The collector's log-prob passes for an engine without hidden states, and the importance weights:
an exact no-op with hf, exactly 1 when the engine's log-probs are the trainer's, and the hidden
states the pass supplies equal the hf engine's captured ones. Runs without vLLM: a stand-in
engine samples with hf and reports what vLLM would (no hidden states, its own log-probs)."""

from __future__ import annotations

from dataclasses import replace

import torch

from clipo.builders import build_module
from clipo.rl.old_policy import OnPolicy
from clipo.rollout import forward_responses
from clipo.run.timing import PhaseTimer
from tests.conftest import TINY_OVERRIDES, compose_config

RECORDS = [
    {"messages": [{"role": "user", "content": f"What is {a}+{b}?"}], "ground_truth": str(a + b)}
    for a, b in [(2, 3), (4, 1)]
]


@torch.no_grad()
def trainer_logprobs(policy, batch, temperature, micro, packed):
    """The trainer's log-probs of `batch`, micro-batch by micro-batch, as the update takes them."""
    index = torch.arange(len(batch.responses))
    parts = [forward_responses(policy, batch.select(i), temperature, packed=packed) for i in index.split(micro)]
    return torch.cat([part.logprobs for part in parts])


class EngineWithoutHidden:
    """Samples like `inner`, returns no hidden states and, as its own log-probs, the trainer's plus `shift`."""

    def __init__(self, inner, micro_batch_size, packed, shift=0.0):
        self.inner, self.micro_batch_size, self.packed, self.shift = inner, micro_batch_size, packed, shift

    def generate(self, records, group_size, sampling, hidden_layer=None):
        batch = self.inner.generate(records, group_size, sampling, None)
        logprobs = trainer_logprobs(self.inner.policy, batch, sampling.logprob_temperature, self.micro_batch_size,
                                    self.packed)
        batch.sampling_logprobs = logprobs + self.shift
        return batch

    def sync_weights(self, policy):
        pass


def _module(tmp_path, *overrides):
    module = build_module(compose_config(TINY_OVERRIDES + list(overrides), output_dir=tmp_path))
    module.configure_optimizers()
    return module


def _without_hidden(module, shift=0.0):
    batching = module.collector.logprobs.batching  # the update's own micro-batches and forward
    module.collector.engine = EngineWithoutHidden(module.collector.engine, batching.micro_batch_size,
                                                  batching.padding_free, shift)


def _collect(module, seed=0):
    torch.manual_seed(seed)
    return module.collector.collect(RECORDS, 1, lambda: RECORDS, PhaseTimer())


def _update(module, collected):
    """The update's metrics on `collected`, with a zero learning rate (the policy stays as it is)."""
    optimizer = torch.optim.SGD(module.policy.parameters(), lr=0.0)
    return module.updater.update(collected, optimizer, lambda loss: loss.backward(), PhaseTimer())


def _count_passes(module, monkeypatch):
    calls = []
    forward = module.collector.logprobs._forward
    monkeypatch.setattr(module.collector.logprobs, "_forward",
                        lambda *args, **kwargs: calls.append(args) or forward(*args, **kwargs))
    return calls


def test_hf_engine_runs_no_training_forward_and_no_weights(tmp_path, monkeypatch):
    module = _module(tmp_path)  # reward mode: hf captures the hidden states while sampling
    calls = _count_passes(module, monkeypatch)
    collected = _collect(module)
    assert calls == [] and isinstance(collected.old, OnPolicy) and collected.old.metrics() == {}
    assert not any(key.startswith("rollout_corr/") for key in _update(module, collected))


def test_engine_without_hidden_gets_them_and_weights_of_exactly_one(tmp_path, monkeypatch):
    module = _module(tmp_path)
    reference = _collect(module)  # hf: hidden captured during generation
    _without_hidden(module)
    calls = _count_passes(module, monkeypatch)
    collected = _collect(module)
    assert len(calls) == 1  # one pass, for the hidden states; pi_old is the update's own forward
    rollouts = collected.rollouts
    assert torch.equal(rollouts.sequences, reference.rollouts.sequences)  # same seed, same samples
    # the pass's states at the pooled positions (response tokens 0..L-2) are the hook's while decoding
    mask = rollouts.hidden_mask
    torch.testing.assert_close(rollouts.hidden[mask], reference.rollouts.hidden[mask], rtol=1e-4, atol=1e-5)
    metrics = _update(module, collected)
    assert metrics["rollout_corr/logprob_diff_max"] == 0 and metrics["rollout_corr/weight_mean"] == 1
    # weights of exactly 1 leave the loss exactly as it is without them
    unweighted = replace(collected, old=OnPolicy(rollouts, None))
    assert torch.equal(_update(module, unweighted)["actor/loss"], metrics["actor/loss"])


def test_mismatch_is_weighted_and_capped(tmp_path):
    module = _module(tmp_path, "rollout.importance_sampling.cap=1.5")
    _without_hidden(module, shift=-1.0)  # sampler 1 nat lower
    collected = _collect(module)
    rollouts, mask = collected.rollouts, collected.rollouts.response_mask
    index = torch.arange(len(rollouts.responses))
    logprobs = trainer_logprobs(module.policy, rollouts, 1.0, 4, module.updater.batching.padding_free)
    _, weights = collected.old.for_micro_batch(index, rollouts, logprobs)
    # exp(train - sampling) = e > 1.5: every response token is capped
    assert torch.equal(weights[mask], torch.full_like(weights[mask], 1.5))
    metrics = _update(module, collected)
    torch.testing.assert_close(metrics["rollout_corr/logprob_diff_mean"], torch.tensor(1.0))
    torch.testing.assert_close(metrics["rollout_corr/kl"], torch.tensor(torch.e - 2.0))  # e^1 - 1 - 1
    assert metrics["rollout_corr/capped_frac"] == 1


def test_several_updates_take_pi_old_and_the_weights_before_the_first(tmp_path, monkeypatch):
    module = _module(tmp_path, "ppo.epochs=2", "loss=none", "rollout.importance_sampling.cap=1.5")
    _without_hidden(module, shift=-1.0)
    calls = _count_passes(module, monkeypatch)
    collected = _collect(module)
    assert len(calls) == 1 and collected.old.weights is not None  # taken once, before the first update
    assert torch.equal(collected.old.weights[collected.rollouts.response_mask], torch.full((int(
        collected.rollouts.response_mask.sum()),), 1.5))
    assert collected.old.metrics()["rollout_corr/capped_frac"] == 1


def test_importance_sampling_can_be_switched_off(tmp_path, monkeypatch):
    module = _module(tmp_path, "rollout.importance_sampling.enabled=false", "loss=none")
    _without_hidden(module, shift=-1.0)
    calls = _count_passes(module, monkeypatch)
    collected = _collect(module)  # nothing needs the training forward: it does not run
    assert calls == [] and isinstance(collected.old, OnPolicy) and collected.old.correction is None
    metrics = _update(module, collected)  # the mismatch is still measured, nothing is weighted
    torch.testing.assert_close(metrics["rollout_corr/logprob_diff_mean"], torch.tensor(1.0))
    assert metrics["rollout_corr/capped_frac"] == 0
