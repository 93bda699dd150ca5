"""Contract: every registered name of every part builds from its config file and satisfies its Protocol."""

import importlib.util
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from clipo.algorithms import LossInputs, StepNormalizer
from clipo.compose import CONFIG_DIR
from clipo.interfaces import AdvantageEstimator, ContrastiveLoss, Head, PolicyLoss, Pooler, RolloutEngine, Verifier
from clipo.models import build_tiny
from clipo.registry import ADVANTAGES, ALGORITHMS, ENGINES, HEADS, LOSSES, POOLERS, VERIFIERS, register_components
from clipo.rollout import RolloutBatch, Sampling

register_components()
N, T, D = 8, 5, 16
GROUPS = torch.tensor([3, 3, 3, 7, 7, 1, 1, 1])  # unequal, not 0-based
REWARDS = torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0])


def config_of(group: str, name: str) -> dict:
    """`configs/<group>/<name>.yaml` as the run would pass it (interpolations such as ${seed} filled in)."""
    raw = OmegaConf.load(Path(CONFIG_DIR) / group / f"{name}.yaml")
    cfg = OmegaConf.merge({"seed": 0}, {"part": raw})
    return OmegaConf.to_container(cfg.part, resolve=True)


@pytest.mark.parametrize("name", ADVANTAGES.names())
def test_advantage_estimators(name):
    estimator = ADVANTAGES.build(config_of("advantage", name))
    assert isinstance(estimator, AdvantageEstimator)
    lengths, components = torch.tensor([5, 1, 3, 4, 4, 2, 5, 1]), torch.stack([REWARDS, 0.5 * REWARDS], -1)
    advantages = estimator(REWARDS, GROUPS, lengths, components, torch.tensor([1.0, 2.0]))
    assert advantages.shape == (N,) and advantages.dtype == torch.float32 and torch.isfinite(advantages).all()


@pytest.mark.parametrize("name", ALGORITHMS.names())
def test_policy_losses(name):
    loss_fn = ALGORITHMS.build({k: v for k, v in config_of("algorithm", name).items() if k != "defaults"})
    assert isinstance(loss_fn, PolicyLoss) and isinstance(loss_fn.uses_reference, bool)
    logprobs = torch.randn(N, T, requires_grad=True)
    mask = torch.rand(N, T) > 0.2
    inputs = LossInputs(logprobs, logprobs.detach() + 0.1, torch.randn(N), mask, groups=GROUPS, correct=REWARDS > 0)
    loss, metrics = loss_fn.loss(inputs, StepNormalizer.from_mask(mask, groups=GROUPS, correct=REWARDS > 0))
    loss.backward()
    assert loss.shape == () and torch.isfinite(loss) and logprobs.grad is not None
    assert all(not v.requires_grad and v.shape == () for v in metrics.values())


@pytest.mark.parametrize("name", VERIFIERS.names())
def test_verifiers(name):
    verifier = VERIFIERS.build(config_of("verifier", name))
    try:
        assert isinstance(verifier, Verifier)
        answer = "B" if name == "choice" else "4"  # a choice verifier scores letters
        scores = verifier([f"so \\boxed{{{answer}}}", "no idea"], [answer, answer])
        assert scores == [1.0, 0.0]
    finally:
        verifier.close()


@pytest.mark.parametrize("name", POOLERS.names())
def test_poolers(name):
    pooler = POOLERS.build(config_of("pooler", name), hidden_size=D)
    assert isinstance(pooler, Pooler)
    assert pooler(torch.randn(N, T, D), torch.rand(N, T) > 0.3).shape == (N, D)


@pytest.mark.parametrize("name", HEADS.names())
def test_heads(name):
    head = HEADS.build(config_of("head", name), in_dim=D)
    assert isinstance(head, Head)
    embeddings = head(torch.randn(N, D))
    torch.testing.assert_close(torch.linalg.vector_norm(embeddings, dim=-1), torch.ones(N))


@pytest.mark.parametrize("name", LOSSES.names())
def test_contrastive_losses(name):
    loss = LOSSES.build(config_of("loss", name))
    assert isinstance(loss, ContrastiveLoss)
    z = torch.nn.functional.normalize(torch.randn(N, 6), dim=-1)
    per_sample, batch_loss = loss(z, REWARDS > 0.5, GROUPS)
    assert per_sample.shape == (N,) and batch_loss.shape == ()
    assert loss.sets(REWARDS > 0.5, GROUPS).anchors.shape == (N,)


@pytest.mark.parametrize("name", ENGINES.names())
def test_rollout_engines(name):
    if name.startswith("vllm") and importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM is not installed (./scripts/setup.sh --vllm installs it)")
    policy, tokenizer = build_tiny(num_attention_heads=2, num_key_value_heads=1)  # head size 32, as vLLM's CPU kernels need
    engine = ENGINES.build({"name": name}, policy=policy, tokenizer=tokenizer)
    assert isinstance(engine, RolloutEngine)
    if name == "vllm_server":  # one server a session: its generation is tested in tests/rollout/test_vllm_server.py
        return
    records = [{"messages": [{"role": "user", "content": q}], "ground_truth": "4", "data_source": "t"} for q in ("2+2?", "1+3=")]
    sampling = Sampling(max_new_tokens=6, seed=3)
    batch = engine.generate(records, 3, sampling, hidden_layer=-1)
    assert isinstance(batch, RolloutBatch) and len(batch.responses) == 6 and batch.groups.tolist() == [0, 0, 0, 1, 1, 1]
    width = batch.response_mask.shape[1]
    assert batch.response_ids.shape == (6, width) and batch.ground_truths == ["4"] * 6
    assert batch.hidden is None or batch.hidden.shape == (6, width, policy.config.hidden_size)
    again = engine.generate(records, 3, sampling)  # the same seed draws the same responses
    assert again.responses == batch.responses
    engine.sync_weights(policy)
