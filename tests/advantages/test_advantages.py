"""Advantage estimators: hand-computed values, a naive per-group loop, properties, the registry contract."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from clipo.advantages import dr_grpo_advantages, grpo_advantages, reinforce_pp_advantages, rloo_advantages
from clipo.registry import ADVANTAGES

# Groups 7 (size 4), 3 (size 2) and 5 (size 1), with arbitrary ids.
GROUPS = torch.tensor([7, 7, 7, 7, 3, 3, 5])
REWARDS = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0])


def test_grpo_hand_example():
    # group 7: mean 0.25, unbiased var (0.75^2 + 3 * 0.25^2) / 3 = 0.25, std 0.5 -> 0.75/0.5 = 1.5, -0.25/0.5 = -0.5
    # group 3: mean 0.5, unbiased var (0.25 + 0.25) / 1 = 0.5, std 0.70711 -> +-0.5/0.70711 = +-0.70711
    # group 5: size 1 -> 0
    expected = torch.tensor([1.5, -0.5, -0.5, -0.5, 0.70711, -0.70711, 0.0])
    assert_close(grpo_advantages(REWARDS, GROUPS), expected, atol=1e-5, rtol=0)


def test_dr_grpo_hand_example():
    # r - group mean: group 7 mean 0.25, group 3 mean 0.5, singleton 1 - 1 = 0
    expected = torch.tensor([0.75, -0.25, -0.25, -0.25, 0.5, -0.5, 0.0])
    assert_close(dr_grpo_advantages(REWARDS, GROUPS), expected)


def test_rloo_hand_example():
    # group 7: 1 - mean(0,0,0) = 1; 0 - mean(1,0,0) = -1/3. group 3: 1 - 0 = 1, 0 - 1 = -1. singleton: 0.
    expected = torch.tensor([1.0, -1 / 3, -1 / 3, -1 / 3, 1.0, -1.0, 0.0])
    assert_close(rloo_advantages(REWARDS, GROUPS), expected)


def test_reinforce_pp_hand_example():
    # centred: [0.75, -0.25, -0.25, -0.25, 0.5, -0.5] (+ the singleton, left out, stays 0)
    # batch mean 0, unbiased var (0.5625 + 3 * 0.0625 + 0.25 + 0.25) / 5 = 1.25 / 5 = 0.25, std 0.5
    expected = torch.tensor([1.5, -0.5, -0.5, -0.5, 1.0, -1.0, 0.0])
    assert_close(reinforce_pp_advantages(REWARDS, GROUPS), expected, atol=1e-6, rtol=0)


def test_opo_gpg_passk_hand_examples():
    from clipo.advantages import gpg_advantages, grpo_passk_advantages, opo_advantages

    lengths = torch.tensor([2, 6, 1, 1, 3, 5, 4])
    # opo, group 7: baseline (2*1 + 6*0 + 1*0 + 1*0) / 10 = 0.2 -> [0.8, -0.2, -0.2, -0.2];
    # group 3: (3*1 + 5*0) / 8 = 0.375 -> [0.625, -0.375]; the singleton: 0
    assert_close(opo_advantages(REWARDS, GROUPS, lengths), torch.tensor([0.8, -0.2, -0.2, -0.2, 0.625, -0.375, 0.0]))
    # gpg: alpha = 7 rollouts / 3 nonzero rewards = 7/3 times r - group mean ([0.75, -0.25 x3, 0.5, -0.5, 0])
    expected = torch.tensor([0.75, -0.25, -0.25, -0.25, 0.5, -0.5, 0.0]) * 7 / 3
    assert_close(gpg_advantages(REWARDS, GROUPS), expected)
    # pass@k: the best of group 7 gets (1 - 0) / (std 0.5 + 1e-6), of group 3 (1 - 0) / (0.70711 + 1e-6)
    expected = torch.tensor([1 / (0.5 + 1e-6), 0, 0, 0, 1 / (0.5**0.5 + 1e-6), 0, 0])
    assert_close(grpo_passk_advantages(REWARDS, GROUPS), expected)
    # ties at the top: only the first best is credited, by 0
    assert_close(grpo_passk_advantages(torch.tensor([1.0, 1.0, 0.0]), torch.tensor([0, 0, 0])), torch.zeros(3))


def test_batch_scale_and_token_whitening_hand_examples():
    # grpo scale=batch: the rewards' unbiased std over the batch, [1,0,0,0,1,0,1]: mean 3/7,
    # var (3 * (4/7)^2 + 4 * (3/7)^2) / 6 = (48/49 + 36/49) / 6 = 2/7, std 0.534522
    centred = torch.tensor([0.75, -0.25, -0.25, -0.25, 0.5, -0.5, 0.0])
    assert_close(grpo_advantages(REWARDS, GROUPS, scale="batch"), centred / ((2 / 7) ** 0.5 + 1e-6))
    # reinforce_pp over tokens: centred values of the 6 counted rollouts weighted by lengths [1, 1, 1, 1, 2, 2]:
    # n = 8, mean = (0.75 - 0.75 + 1 - 1) / 8 = 0, var = (0.5625 + 3 * 0.0625 + 2 * 0.25 + 2 * 0.25) / 7 = 1.75 / 7
    lengths = torch.tensor([1, 1, 1, 1, 2, 2, 9])
    got = reinforce_pp_advantages(REWARDS, GROUPS, whiten_over="tokens", lengths=lengths)
    assert_close(got, centred / (0.25 + 1e-8) ** 0.5)


def naive(rewards: torch.Tensor, groups: torch.Tensor, estimator: str) -> torch.Tensor:
    """Straight from the formulas, one group at a time."""
    out = torch.zeros(len(rewards), dtype=torch.float64)
    r = rewards.double()
    for g in groups.unique():
        idx = (groups == g).nonzero().flatten().tolist()
        if len(idx) < 2:
            continue  # size-1 group: advantage 0
        for i in idx:
            others = [r[j] for j in idx if j != i]
            if estimator == "grpo":
                out[i] = (r[i] - r[idx].mean()) / (r[idx].std() + 1e-6)
            elif estimator == "rloo":
                out[i] = r[i] - sum(others) / len(others)
            else:  # dr_grpo and the first stage of reinforce_pp
                out[i] = r[i] - r[idx].mean()
    if estimator == "reinforce_pp":
        counted = [i for i in range(len(r)) if (groups == groups[i]).sum() > 1]
        x = out[counted]
        out[counted] = (x - x.mean()) / (x.var() + 1e-8).sqrt()
    return out.float()


ESTIMATORS = {
    "grpo": grpo_advantages,
    "dr_grpo": dr_grpo_advantages,
    "rloo": rloo_advantages,
    "reinforce_pp": reinforce_pp_advantages,
}


def random_batch(num_groups: int, group_size: int, seed: int, ragged: bool, binary: bool):
    gen = torch.Generator().manual_seed(seed)
    sizes = torch.randint(1, 2 * group_size, (num_groups,), generator=gen) if ragged else [group_size] * num_groups
    ids = torch.randperm(1000, generator=gen)[:num_groups] * 7 - 300  # arbitrary, some negative
    groups = torch.cat([torch.full((int(s),), int(i)) for s, i in zip(sizes, ids)])
    perm = torch.randperm(len(groups), generator=gen)  # interleave groups
    n = len(groups)
    rewards = torch.randint(0, 2, (n,), generator=gen).float() if binary else torch.randn(n, generator=gen)
    return rewards, groups[perm]


@pytest.mark.parametrize("estimator", sorted(ESTIMATORS))
@pytest.mark.parametrize("num_groups,group_size,seed", [(1, 2, 0), (3, 4, 1), (8, 8, 2), (16, 5, 3)])
@pytest.mark.parametrize("ragged,binary", [(False, True), (True, True), (True, False)])
def test_matches_naive_loop(estimator, num_groups, group_size, seed, ragged, binary):
    rewards, groups = random_batch(num_groups, group_size, seed, ragged, binary)
    got = ESTIMATORS[estimator](rewards, groups)
    assert got.dtype == torch.float32 and got.shape == rewards.shape
    assert_close(got, naive(rewards, groups, estimator), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo", "rloo"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sums_to_zero_within_group(estimator, seed):
    rewards, groups = random_batch(6, 5, seed, ragged=True, binary=False)
    adv = ESTIMATORS[estimator](rewards, groups)
    for g in groups.unique():
        assert abs(float(adv[groups == g].sum())) < 1e-4


def lengths_of(rewards: torch.Tensor) -> torch.Tensor:
    """Response lengths 1..7 for the estimators that weigh by length."""
    return torch.arange(len(rewards)) % 7 + 1


def built(name: str, **settings):
    """The registered estimator `name`, called as the collector calls it (with lengths)."""
    estimator = ADVANTAGES.build({"name": name, **settings})
    return lambda rewards, groups: estimator(rewards, groups, lengths_of(rewards))


# every estimator whose advantages sum over a group's sign pattern: positive above the group's baseline
SIGNED = sorted(set(ADVANTAGES.names()) - {"grpo_passk"})


@pytest.mark.parametrize("estimator", SIGNED)
def test_size_one_and_equal_reward_groups_get_zero(estimator):
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 5.0])
    groups = torch.tensor([0, 0, 0, 1, 1, 2])  # group 0 all equal, group 2 alone
    adv = built(estimator)(rewards, groups)
    assert_close(adv[[0, 1, 2, 5]], torch.zeros(4))
    assert adv[3] < 0 < adv[4]


@pytest.mark.parametrize("estimator", SIGNED)
@pytest.mark.parametrize("value", [0.9, 0.1, 0.7, 1 / 3, -2.3, 0.35 + 0.5 * 0.6])
def test_fractional_equal_groups_get_exactly_zero(estimator, value):
    # weighted functions or a reward model give non-binary rewards: in float32 the mean of 16
    # copies of 0.9 is one rounding step off, which GRPO's std + 1e-6 blew up to 0.1
    rewards = torch.cat([torch.full((16,), value), torch.tensor([0.0, 1.0, 0.25, 0.5])])
    groups = torch.tensor([4] * 16 + [9] * 4)
    adv = built(estimator)(rewards, groups)
    assert torch.equal(adv[:16], torch.zeros(16))  # exactly, not within a tolerance
    assert (adv[16:] != 0).all()
    alone = built(estimator)(torch.full((16,), value), torch.zeros(16, dtype=torch.long))
    assert torch.equal(alone, torch.zeros(16))


def test_unequal_group_sizes_grpo():
    # group 0 = [0, 1] (size 2), group 1 = [0, 0, 0, 3] (size 4): statistics must not mix
    rewards = torch.tensor([0.0, 1.0, 0.0, 0.0, 0.0, 3.0])
    groups = torch.tensor([0, 0, 1, 1, 1, 1])
    # group 1: mean 0.75, unbiased var (3 * 0.5625 + 5.0625) / 3 = 2.25, std 1.5 -> -0.5, 1.5
    expected = torch.tensor([-0.70711, 0.70711, -0.5, -0.5, -0.5, 1.5])
    assert_close(grpo_advantages(rewards, groups), expected, atol=1e-5, rtol=0)


def test_integer_rewards_and_bad_input():
    assert grpo_advantages(torch.tensor([1, 0]), torch.tensor([0, 0])).dtype == torch.float32
    with pytest.raises(ValueError, match="integer group ids"):
        grpo_advantages(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0]))
    with pytest.raises(ValueError, match="equal length"):
        rloo_advantages(torch.tensor([1.0, 0.0]), torch.tensor([0, 0, 1]))


@pytest.mark.parametrize("name", ADVANTAGES.names())
def test_registry_contract(name):
    rewards, groups = random_batch(4, 4, seed=5, ragged=True, binary=True)
    adv = built(name)(rewards, groups)
    assert adv.shape == rewards.shape and adv.dtype == torch.float32 and torch.isfinite(adv).all()
    if name in ESTIMATORS:
        assert_close(adv, ESTIMATORS[name](rewards, groups))


@pytest.mark.parametrize("name", ["opo", "reinforce_pp", "gdpo"])
def test_length_users_need_lengths(name):
    settings = {"whiten_over": "tokens"} if name == "reinforce_pp" else {}
    with pytest.raises(ValueError, match="response length"):
        ADVANTAGES.build({"name": name, **settings})(REWARDS, GROUPS)


def test_registry_lists_all_estimators():
    assert set(ADVANTAGES.names()) >= set(ESTIMATORS)
