"""group_stats against a naive Python loop, on unequal, shuffled (non-contiguous) groups."""

import pytest
import torch
from torch.testing import assert_close

from clipo.groups import group_stats


def naive_group_stats(values: list[float], groups: list[int]) -> dict[int, dict[str, float]]:
    """Per group id: count, mean, unbiased variance (0 for one member), all-equal flag, first position."""
    out = {}
    for g in sorted(set(groups)):
        members = [v for v, h in zip(values, groups) if h == g]
        n = len(members)
        mean = sum(members) / n
        var = sum((v - mean) ** 2 for v in members) / (n - 1) if n > 1 else 0.0
        out[g] = {"count": n, "mean": mean, "var": var, "zero_var": len(set(members)) == 1,
                  "first": groups.index(g)}  # fmt: skip
    return out


@pytest.mark.parametrize("seed", range(8))
def test_matches_a_naive_loop_on_unequal_shuffled_groups(seed):
    gen = torch.Generator().manual_seed(seed)
    sizes = torch.randint(1, 7, (6,), generator=gen).tolist()  # some groups of 1
    ids = torch.randperm(50, generator=gen)[: len(sizes)] * 7 - 100  # arbitrary, negative too
    groups = torch.cat([torch.full((s,), int(i)) for s, i in zip(sizes, ids)])
    values = torch.randint(0, 2, (len(groups),), generator=gen).float()  # 0/1 rewards: many equal groups
    values[: sizes[0]] = 0.3  # one group with equal non-integer values
    order = torch.randperm(len(groups), generator=gen)  # interleave the groups
    groups, values = groups[order], values[order]

    stats = group_stats(values, groups)
    naive = naive_group_stats(values.tolist(), groups.tolist())
    keys = sorted(naive)  # group k of the helper is the k-th smallest id
    assert stats.num_groups == len(keys)
    assert_close(stats.counts, torch.tensor([float(naive[g]["count"]) for g in keys]))
    assert_close(stats.mean, torch.tensor([naive[g]["mean"] for g in keys]))
    assert_close(stats.var, torch.tensor([naive[g]["var"] for g in keys]))
    assert stats.zero_variance.tolist() == [naive[g]["zero_var"] for g in keys]
    assert stats.first.tolist() == [naive[g]["first"] for g in keys]
    assert [keys[k] for k in stats.index.tolist()] == groups.tolist()
    assert_close(stats.zero_variance_fraction, torch.tensor(sum(naive[g]["zero_var"] for g in keys) / len(keys)))
    assert_close(stats.per_rollout(stats.mean), torch.tensor([naive[g]["mean"] for g in groups.tolist()]))


def test_hand_example_counts_groups_not_rollouts():
    # id 5: four 1s (zero variance); id 2: a 0 and a 1; id 9: three 0s (zero variance)
    groups = torch.tensor([5, 5, 2, 5, 5, 9, 2, 9, 9])
    values = torch.tensor([1, 1, 0, 1, 1, 0, 1, 0, 0.0])
    stats = group_stats(values, groups)  # groups in id order: 2, 5, 9
    assert stats.counts.tolist() == [2, 4, 3] and stats.first.tolist() == [2, 0, 5]
    assert_close(stats.mean, torch.tensor([0.5, 1.0, 0.0]))
    assert_close(stats.var, torch.tensor([0.5, 0.0, 0.0]))  # (0.25 + 0.25) / (2 - 1)
    assert stats.zero_variance.tolist() == [False, True, True]
    assert_close(stats.zero_variance_fraction, torch.tensor(2 / 3))  # 2 of 3 groups, though 7 of 9 rollouts


def test_bad_input_says_what_is_wrong():
    with pytest.raises(ValueError, match="equal length"):
        group_stats(torch.zeros(3), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="integer group ids"):
        group_stats(torch.zeros(3), torch.zeros(3))
    empty = group_stats(torch.zeros(0), torch.zeros(0, dtype=torch.long))
    assert empty.num_groups == 0 and empty.zero_variance_fraction == 0


def test_centered_is_exactly_zero_for_equal_fractional_groups():
    values = torch.tensor([0.9] * 16 + [0.2, 0.6])  # float32: the mean of 16 x 0.9 rounds off 0.9
    groups = torch.tensor([1] * 16 + [2, 2])
    stats = group_stats(values, groups)
    assert torch.equal(stats.centered[:16], torch.zeros(16)) and torch.equal(stats.var[0], torch.tensor(0.0))
    assert_close(stats.centered[16:], torch.tensor([-0.2, 0.2]))
    assert stats.mean[0] == torch.tensor(0.9) and stats.zero_variance.tolist() == [True, False]  # exactly its value
    assert_close(stats.mean, torch.tensor([0.9, 0.4]))


def test_no_finite_float32_reward_overflows_the_statistics():
    """Rewards 0 and 1e30 in one group: before, the squares overflowed float32, the std was inf and every GRPO
    advantage 0. By hand: mean 5e29, centred -/+5e29, unbiased variance 2 * (5e29)^2 / 1 = 5e59 (beyond
    float32: inf), std sqrt(5e59) = 7.0711e29, standardized -/+ 5e29 / 7.0711e29 = -/+ 1/sqrt(2)."""
    from clipo.advantages.grpo import grpo_advantages

    rewards, groups = torch.tensor([0.0, 1e30, 0.0, 1.0]), torch.tensor([0, 0, 1, 1])
    stats = group_stats(rewards, groups)
    assert_close(stats.mean, torch.tensor([5e29, 0.5]))
    assert_close(stats.std, torch.tensor([7.0710678e29, 0.70710678]))
    assert torch.isinf(stats.var[0]) and stats.var[1] == 0.5  # documented: divide by std, not var.sqrt()
    half, small = 2**-0.5, 0.5 / (0.5**0.5 + 1e-6)  # group 1: centred 0.5 over std sqrt(0.5) + eps
    expected = torch.tensor([-half, half, -small, small])
    assert_close(stats.standardized(1e-6), expected, atol=1e-7, rtol=0)  # float32 rounding of values ~0.7: 6e-8
    assert_close(grpo_advantages(rewards, groups), expected, atol=1e-7, rtol=0)
    # the widest float32 spread: the std (4.2e38) itself is beyond float32, the standardized values are not
    extreme = group_stats(torch.tensor([-3e38, 3e38, 1.0, 1.0]), torch.tensor([0, 0, 1, 1]))
    assert_close(extreme.standardized(1e-6), torch.tensor([-half, half, 0.0, 0.0]), atol=1e-7, rtol=0)
    assert torch.equal(extreme.centered[2:], torch.zeros(2))  # a zero-variance group stays exactly 0
