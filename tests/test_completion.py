"""The collector's training forward for an engine without hidden states, and the importance weights:
an exact no-op with hf, exactly 1 when the engine's log-probs are the trainer's, and the hidden
states the forward supplies equal the hf engine's captured ones. Runs without vLLM: a stand-in
engine samples with hf and reports what vLLM would (no hidden states, its own log-probs)."""

from __future__ import annotations

from dataclasses import replace

import torch

from clipo.builders import build_module
from clipo.rollout.completion import training_forward
from clipo.timing import PhaseTimer
from tests.conftest import TINY_OVERRIDES, compose_config

RECORDS = [
    {"messages": [{"role": "user", "content": f"What is {a}+{b}?"}], "ground_truth": str(a + b)}
    for a, b in [(2, 3), (4, 1)]
]


class EngineWithoutHidden:
    """Samples like `inner`, returns no hidden states and, as its own log-probs, the trainer's (computed
    exactly as the collector's forward does) plus `shift`."""

    def __init__(self, inner, micro_batch_size, shift=0.0):
        self.inner, self.micro_batch_size, self.shift = inner, micro_batch_size, shift
        self.calls = 0

    def generate(self, records, group_size, sampling, capture_layer=None):
        batch = self.inner.generate(records, group_size, sampling, None)
        out = training_forward(self.inner.policy, batch, sampling.logprob_temperature, None, self.micro_batch_size)
        batch.sampling_logprobs = out.logprobs + self.shift
        return batch

    def sync_weights(self, policy):
        pass


def _module(tmp_path, *overrides):
    module = build_module(compose_config(TINY_OVERRIDES + list(overrides), output_dir=tmp_path))
    module.configure_optimizers()
    return module


def _collect(module, seed=0):
    torch.manual_seed(seed)
    return module.collector.collect(RECORDS, 1, lambda: RECORDS, PhaseTimer())


def _update_loss(module, collected):
    """The update's loss on `collected`, with a zero learning rate (the policy stays as it is)."""
    optimizer = torch.optim.SGD(module.policy.parameters(), lr=0.0)
    return module.updater.update(collected, optimizer, lambda loss: loss.backward(), PhaseTimer())["actor/loss"]


def test_hf_engine_runs_no_training_forward_and_no_weights(tmp_path, monkeypatch):
    module = _module(tmp_path)  # reward mode: hf captures the hidden states while sampling
    calls = []
    completion = module.collector.completion
    monkeypatch.setattr(module.collector, "completion", lambda *args: calls.append(args) or completion(*args))
    collected = _collect(module)
    assert calls == [] and collected.old_logprobs is None and collected.importance_weights is None
    assert not any(key.startswith("rollout_corr/") for key in collected.metrics)


def test_engine_without_hidden_gets_them_and_weights_of_exactly_one(tmp_path):
    module = _module(tmp_path)
    reference = _collect(module)  # hf: hidden captured during generation
    micro = module.collector.completion.micro_batch_size
    module.collector.engine = EngineWithoutHidden(module.collector.engine, micro)
    collected = _collect(module)
    rollouts = collected.rollouts
    assert torch.equal(rollouts.sequences, reference.rollouts.sequences)  # same seed, same samples
    # the forward's states at the pooled positions (response tokens 0..L-2) are the hook's while decoding
    mask = rollouts.hidden_mask
    torch.testing.assert_close(rollouts.hidden[mask], reference.rollouts.hidden[mask], rtol=1e-4, atol=1e-5)
    assert torch.equal(collected.importance_weights, torch.ones_like(collected.importance_weights))
    assert collected.metrics["rollout_corr/logprob_diff_max"] == 0
    # weights of exactly 1 leave the loss exactly as it is without them
    assert torch.equal(_update_loss(module, collected), _update_loss(module, replace(collected, importance_weights=None)))


def test_mismatch_is_weighted_and_capped(tmp_path):
    module = _module(tmp_path, "rollout.importance_sampling.cap=1.5")
    micro = module.collector.completion.micro_batch_size
    module.collector.engine = EngineWithoutHidden(module.collector.engine, micro, shift=-1.0)  # sampler 1 nat lower
    collected = _collect(module)
    mask = collected.rollouts.response_mask
    # exp(train - sampling) = e > 1.5: every response token is capped
    assert torch.equal(collected.importance_weights[mask], torch.full_like(collected.importance_weights[mask], 1.5))
    torch.testing.assert_close(collected.metrics["rollout_corr/logprob_diff_mean"], torch.tensor(1.0))
    torch.testing.assert_close(collected.metrics["rollout_corr/kl"], torch.tensor(torch.e - 2.0))  # e^1 - 1 - 1
    assert collected.metrics["rollout_corr/capped_frac"] == 1


def test_importance_sampling_can_be_switched_off(tmp_path):
    module = _module(tmp_path, "rollout.importance_sampling.enabled=false", "loss=none")
    micro = module.collector.completion.micro_batch_size
    module.collector.engine = EngineWithoutHidden(module.collector.engine, micro, shift=-1.0)
    collected = _collect(module)  # nothing needs the training forward: it does not run
    assert collected.old_logprobs is None and collected.importance_weights is None
