"""Every `advantage=` option with a verl or TRL counterpart equals that code on the same rewards.

verl 0.9.1's registered estimators (`core_algos.get_adv_estimator_fn`, tests/references/verl.py) take
token-level rewards: the outcome reward sits on each response's last token, as verl's reward manager
puts it, and the advantage is read at the first token. TRL 1.16's advantages are its own inline code
(`_generate_and_score_completions`, tests/references/trl.py) on contiguous groups. Inputs: uneven
response lengths, binary and real rewards, a group of equal rewards, three seeds. Where clipo's
conventions differ (a group of size 1 gets 0; a group of equal rewards gets exactly 0 after a batch
whitening) those rollouts are checked against the convention and left out of the comparison.
Tolerance 1e-5: float32 statistics of at most a few hundred terms, taken in other orders (clipo's
batch sums in float64).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from clipo.groups import group_stats
from clipo.registry import ADVANTAGES, register_components
from tests.references.trl import trl_advantages
from tests.references.verl import algo_config, core_algos

register_components()
TOL = {"atol": 1e-5, "rtol": 1e-5}
SEEDS = [0, 1, 2]
G, K, T = 4, 6, 9  # group size, groups, response tokens


def batch(seed: int, binary: bool = True):
    """rewards [N], groups [N], lengths [N]; group 0 has equal rewards, the rest are mixed."""
    gen = torch.Generator().manual_seed(seed)
    n = G * K
    rewards = (torch.rand(n, generator=gen) < 0.5).float() if binary else torch.randn(n, generator=gen)
    rewards[:G] = rewards[0]
    rewards[G::G], rewards[G + 1 :: G] = 1.0, 0.0  # every other group mixed
    rewards[G + 2 : 2 * G] = 0.0  # group 1 has one correct rollout (pass@k credits it)
    groups = torch.arange(n) // G
    lengths = torch.randint(1, T + 1, (n,), generator=gen)
    return rewards, groups, lengths


def verl_estimator(name: str, rewards, groups, lengths, **kwargs) -> torch.Tensor:
    """verl's estimator `name` on token-level rewards; [N], the value at each response's first token."""
    mask = (torch.arange(T) < lengths.unsqueeze(-1)).float()
    token_rewards = torch.zeros(len(rewards), T)
    token_rewards[torch.arange(len(rewards)), lengths - 1] = rewards
    advantages, _ = core_algos().get_adv_estimator_fn(name)(
        token_level_rewards=token_rewards, response_mask=mask, **kwargs)
    return advantages[:, 0]


def index_of(groups: torch.Tensor) -> np.ndarray:
    return groups.numpy().astype(object)  # verl's uid array


def ours(name: str, rewards, groups, lengths, **settings) -> torch.Tensor:
    return ADVANTAGES.build({"name": name, **settings})(rewards, groups, lengths)


def equal_groups(rewards, groups) -> torch.Tensor:
    stats = group_stats(rewards, groups)
    return stats.per_rollout(stats.zero_variance)


# clipo (name, settings): (verl name, its keyword arguments), compared on every rollout
VERL_CASES = {
    "grpo": (("grpo", {}), ("grpo", {"epsilon": 1e-6, "norm_adv_by_std_in_grpo": True})),
    "grpo_vectorized": (("grpo", {}), ("grpo_vectorized", {"epsilon": 1e-6})),
    "dr_grpo": (("dr_grpo", {}), ("grpo", {"norm_adv_by_std_in_grpo": False})),
    "rloo": (("rloo", {}), ("rloo", {})),
    "rloo_vectorized": (("rloo", {}), ("rloo_vectorized", {})),
    "opo": (("opo", {}), ("opo", {})),
    "gpg": (("gpg", {}), ("gpg", {})),
    "grpo_passk": (("grpo_passk", {}), ("grpo_passk", {"config": "norm"})),
    "grpo_passk_unscaled": (("grpo_passk", {"scale": False}), ("grpo_passk", {"config": "no norm"})),
    # whitened over the batch: a group of equal rewards is exactly 0 here, (0 - mean) / std in verl
    "reinforce_pp_baseline": (("reinforce_pp", {"whiten_over": "tokens"}), ("reinforce_plus_plus_baseline", {})),
    "gdpo": (("gdpo", {}), ("gdpo", {})),
}
WHITENED = {"reinforce_pp_baseline", "gdpo"}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("case", sorted(VERL_CASES))
def test_equals_verl_estimator(case, binary, seed):
    (name, settings), (verl_name, kwargs) = VERL_CASES[case]
    rewards, groups, lengths = batch(seed, binary)
    if kwargs.get("config") is not None:
        kwargs = {**kwargs, "config": algo_config(norm_adv_by_std_in_grpo=kwargs["config"] == "norm")}
    theirs = verl_estimator(verl_name, rewards, groups, lengths, index=index_of(groups), **kwargs)
    got = ours(name, rewards, groups, lengths, **settings)
    compared = ~equal_groups(rewards, groups) if case in WHITENED else torch.ones_like(groups, dtype=torch.bool)
    assert_close(got[compared], theirs[compared], **TOL)
    assert torch.equal(got[~compared], torch.zeros_like(got[~compared]))
    assert got.abs().sum() > 0


@pytest.mark.parametrize("seed", SEEDS)
def test_reinforce_pp_without_baseline_equals_verls_reinforce_plus_plus(seed):
    rewards, groups, lengths = batch(seed, binary=False)
    theirs = verl_estimator("reinforce_plus_plus", rewards, groups, lengths, config=algo_config(gamma=1.0))
    assert_close(ours("reinforce_pp", rewards, groups, lengths, baseline="none", whiten_over="tokens"), theirs, **TOL)


@pytest.mark.parametrize("seed", SEEDS)
def test_gdpo_components_equal_verls_reward_keys(seed):
    """Two reward functions (one with weight 3): verl's GDPO reads them from `non_tensor_batch`."""
    rewards, groups, lengths = batch(seed)
    second = torch.randn(len(rewards), generator=torch.Generator().manual_seed(seed + 10))
    second[:G] = 0.5  # group 0 equal in every component
    n = len(rewards)
    mask = torch.arange(T) < lengths.unsqueeze(-1)
    verl_batch = {"prompts": torch.zeros(n, 1, dtype=torch.long),
                  "attention_mask": torch.cat([torch.ones(n, 1, dtype=torch.long), mask.long()], -1)}
    config = algo_config(gdpo_reward_keys=["acc", "format"], gdpo_reward_weights=[1.0, 3.0])
    extra = {"acc": rewards.numpy(), "format": second.numpy()}
    theirs = verl_estimator("gdpo", rewards, groups, lengths, index=index_of(groups), config=config,
                            non_tensor_batch=extra, batch=verl_batch)
    components, weights = torch.stack([rewards, second], -1), torch.tensor([1.0, 3.0])
    got = ADVANTAGES.build({"name": "gdpo"})(rewards + 3 * second, groups, lengths, components, weights)
    compared = ~equal_groups(rewards, groups)
    assert_close(got[compared], theirs[compared], **TOL)
    assert torch.equal(got[~compared], torch.zeros(int((~compared).sum())))


# clipo (name, settings): TRL's scale_rewards (sum_then_normalize, one reward function)
TRL_CASES = {
    "group": (("grpo", {"eps": 1e-4}), "group"),
    "batch": (("grpo", {"eps": 1e-4, "scale": "batch"}), "batch"),
    "none": (("dr_grpo", {}), "none"),
}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("case", sorted(TRL_CASES))
def test_equals_trl_scale_rewards(case, binary, seed):
    (name, settings), scale = TRL_CASES[case]
    rewards, groups, lengths = batch(seed, binary)
    theirs = trl_advantages(rewards.unsqueeze(-1), torch.ones(1), G, scale)
    assert_close(ours(name, rewards, groups, lengths, **settings), theirs, **TOL)


@pytest.mark.parametrize("seed", SEEDS)
def test_gdpo_over_rollouts_is_trls_normalize_then_sum(seed):
    """TRL's `normalize_then_sum` divides by `std + 1e-4` where clipo's whitening (verl's form) multiplies by
    `rsqrt(var + 1e-8)`: with eps 1e-4 in the groups, the two differ by ~1e-4 / std relative (std ~ 1 here),
    so the tolerance is 3e-4 relative."""
    rewards, groups, lengths = batch(seed)
    second = torch.randn(len(rewards), generator=torch.Generator().manual_seed(seed + 10))
    second[:G] = 0.5
    components, weights = torch.stack([rewards, second], -1), torch.tensor([1.0, 3.0])
    theirs = trl_advantages(components, weights, G, "group", "normalize_then_sum")
    got = ADVANTAGES.build({"name": "gdpo", "eps": 1e-4, "whiten_over": "rollouts"})(
        rewards + 3 * second, groups, lengths, components, weights)
    compared = ~equal_groups(rewards, groups)
    assert_close(got[compared], theirs[compared], atol=3e-4, rtol=3e-4)
