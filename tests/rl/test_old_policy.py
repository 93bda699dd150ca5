"""The collector's log-prob passes for an engine without hidden states, and the importance weights:
an exact no-op with hf, exactly 1 when the engine's log-probs are the trainer's, and the hidden
states the pass supplies equal the hf engine's captured ones. Runs without vLLM: a stand-in
engine samples with hf and reports what vLLM would (no hidden states, its own log-probs)."""

from __future__ import annotations

import pytest
import torch

from clipo.builders import build_module
from clipo.registry import ENGINES, register_components
from clipo.rollout.hf_engine import HFEngine
from clipo.run.timing import PhaseTimer
from tests.conftest import TINY_OVERRIDES, compose_config

RECORDS = [
    {"messages": [{"role": "user", "content": f"What is {a}+{b}?"}], "ground_truth": str(a + b)}
    for a, b in [(2, 3), (4, 1)]
]


@torch.no_grad()
def trainer_logprobs(policy, batch, temperature, batching):
    """The trainer's log-probs of `batch`, micro-batch by micro-batch, as the update takes them."""
    index = torch.arange(len(batch.responses))
    logprobs = torch.zeros(batch.response_mask.shape)
    for micro_batch in batching.micro_batches(batch, index, batching.sizes(len(index), 1)[1]):
        out = batching.forward(policy, batch.select(micro_batch.index), temperature, head_chunks=micro_batch.head_chunks)
        logprobs[micro_batch.index] = out.logprobs
    return logprobs


class EngineWithoutHidden(HFEngine):
    """Samples like the hf engine, returns no hidden states and, as its own log-probs, the trainer's plus `shift`
    (taken through the update's own micro-batches and forward plan, `batching`, set once the module is built)."""

    gives_hidden_states = False
    gives_sampling_logprobs = True
    shift, batching = 0.0, None

    def generate(self, records, group_size, sampling, hidden_layer=None):
        assert hidden_layer is None  # the builders planned the collector's pass instead
        batch = super().generate(records, group_size, sampling, None)
        batch.sampling_logprobs = trainer_logprobs(self.policy, batch, sampling.logprob_temperature,
                                                   self.batching) + self.shift
        return batch


@pytest.fixture(autouse=True, scope="module")
def _stand_in_engine():
    register_components()
    ENGINES._entries["without_hidden"] = EngineWithoutHidden
    yield
    del ENGINES._entries["without_hidden"]


def _module(tmp_path, *overrides, shift=None):
    """A module built for the hf engine, or for the stand-in when `shift` is given (its log-probs' offset)."""
    engine = [] if shift is None else ["rollout.engine=without_hidden"]
    module = build_module(compose_config(TINY_OVERRIDES + engine + list(overrides), output_dir=tmp_path))
    module.configure_optimizers()
    if shift is not None:
        module.collector.engine.shift, module.collector.engine.batching = shift, module.updater.batching
    return module


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
    assert calls == [] and collected.old_logprobs is None and collected.forward_passes == 0
    assert module.updater.correction is None
    assert not any(key.startswith("rollout_corr/") for key in _update(module, collected))


def test_engine_without_hidden_gets_them_and_weights_of_exactly_one(tmp_path, monkeypatch):
    reference = _collect(_module(tmp_path))  # hf: hidden captured during generation
    module = _module(tmp_path, shift=0.0)
    calls = _count_passes(module, monkeypatch)
    collected = _collect(module)
    assert len(calls) == 1 and collected.forward_passes == 1  # for the hidden states; pi_old is the update's own
    assert collected.old_logprobs is None
    rollouts = collected.rollouts
    assert torch.equal(rollouts.sequences, reference.rollouts.sequences)  # same seed, same samples
    # the pass's states at the pooled positions (response tokens 0..L-2) are the hook's while decoding
    mask = rollouts.hidden_mask
    torch.testing.assert_close(rollouts.hidden[mask], reference.rollouts.hidden[mask], rtol=1e-4, atol=1e-5)
    metrics = _update(module, collected)
    assert metrics["rollout_corr/logprob_diff_max"] == 0 and metrics["rollout_corr/weight_mean"] == 1
    # weights of exactly 1 leave the loss exactly as it is without them
    correction, module.updater.correction = module.updater.correction, None
    assert torch.equal(_update(module, collected)["actor/loss"], metrics["actor/loss"])
    module.updater.correction = correction


def test_mismatch_is_weighted_and_capped(tmp_path):
    module = _module(tmp_path, "rollout.importance_sampling.cap=1.5", shift=-1.0)  # sampler 1 nat lower
    collected = _collect(module)
    rollouts, mask = collected.rollouts, collected.rollouts.response_mask
    logprobs = trainer_logprobs(module.policy, rollouts, 1.0, module.updater.batching)
    weights, _ = module.updater.correction(logprobs, rollouts.sampling_logprobs, mask)
    # exp(train - sampling) = e > 1.5: every response token is capped
    assert torch.equal(weights[mask], torch.full_like(weights[mask], 1.5))
    metrics = _update(module, collected)
    torch.testing.assert_close(metrics["rollout_corr/logprob_diff_mean"], torch.tensor(1.0))
    torch.testing.assert_close(metrics["rollout_corr/kl"], torch.tensor(torch.e - 2.0))  # e^1 - 1 - 1
    assert metrics["rollout_corr/capped_frac"] == 1


def test_several_updates_take_pi_old_before_the_first(tmp_path, monkeypatch):
    module = _module(tmp_path, "ppo.epochs=2", "loss=none", "rollout.importance_sampling.cap=1.5", shift=-1.0)
    calls = _count_passes(module, monkeypatch)
    collected = _collect(module)
    assert len(calls) == 1 and collected.old_logprobs is not None  # taken once, before the first update
    mask = collected.rollouts.response_mask
    torch.testing.assert_close(collected.old_logprobs, trainer_logprobs(module.policy, collected.rollouts, 1.0,
                                                                        module.updater.batching))
    metrics = _update(module, collected)  # both epochs weigh against the same pi_old: every token capped
    assert metrics["rollout_corr/capped_frac"] == 1 and int(mask.sum()) > 0


def test_importance_sampling_can_be_switched_off(tmp_path, monkeypatch):
    module = _module(tmp_path, "rollout.importance_sampling.enabled=false", "loss=none", shift=-1.0)
    calls = _count_passes(module, monkeypatch)
    collected = _collect(module)  # nothing needs the training forward: it does not run
    assert calls == [] and collected.old_logprobs is None and module.updater.correction is None
    metrics = _update(module, collected)  # the mismatch is still measured, nothing is weighted
    torch.testing.assert_close(metrics["rollout_corr/logprob_diff_mean"], torch.tensor(1.0))
    assert metrics["rollout_corr/capped_frac"] == 0
