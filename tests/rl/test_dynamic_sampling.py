"""DAPO dynamic sampling filter, group selection with refills, and soft overlong punishment."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from clipo.groups import group_stats
from clipo.rl.dynamic_sampling import overlong_penalty, select_groups


def zero_variance_groups(rewards, groups):
    """[N] whether each rollout's group has no reward variance: what dynamic sampling drops."""
    stats = group_stats(rewards, groups)
    return stats.per_rollout(stats.zero_variance)


def test_zero_variance_filter_hand_example():
    groups = torch.tensor([0, 0, 1, 1, 2, 2, 2, 3, 4, 4])
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.2, 0.3])
    # group 0 all correct, group 2 all wrong, group 3 alone: zero variance; groups 1 and 4 vary
    expected = torch.tensor([True, True, False, False, True, True, True, True, False, False])
    assert torch.equal(zero_variance_groups(rewards, groups), expected)


def test_overlong_penalty_hand_example():
    lengths = torch.tensor([10, 15, 16, 18, 20, 25])
    # max_len 20, buffer 5: free up to 15, then -(len - 15) / 5: 16 -> -0.2, 18 -> -0.6, 20 -> -1, beyond -> -1
    assert_close(overlong_penalty(lengths, max_len=20, buffer=5), torch.tensor([0.0, 0.0, -0.2, -0.6, -1.0, -1.0]))
    assert_close(overlong_penalty(lengths, 20, 5, penalty=0.5), torch.tensor([0.0, 0.0, -0.1, -0.3, -0.5, -0.5]))
    assert_close(overlong_penalty(lengths, 20, 0), torch.zeros(6))  # buffer 0 disables
    with pytest.raises(ValueError, match="buffer <= max_len"):
        overlong_penalty(lengths, 20, 21)


# ids 10 and 12 vary, 11 and 13 do not
GROUPS = torch.tensor([10, 10, 11, 11, 12, 12, 13, 13])
REWARDS = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0])


def test_select_enough_groups():
    sel = select_groups(REWARDS, GROUPS, target_groups=2, refills=0, max_refills=3)
    assert torch.equal(sel.keep, torch.tensor([True, True, False, False, True, True, False, False]))
    assert (sel.num_groups, sel.num_informative, sel.enough, sel.limit_hit, sel.need_more) == (2, 2, True, False, False)


def test_select_takes_at_most_target_in_order_of_appearance():
    groups, rewards = torch.tensor([5, 5, 2, 2]), torch.tensor([0.0, 1.0, 1.0, 0.0])
    sel = select_groups(rewards, groups, target_groups=1, refills=0, max_refills=0)
    assert torch.equal(sel.keep, torch.tensor([True, True, False, False]))  # group 5 came first, not the smaller id


def test_select_asks_for_more_without_returning_zero_variance_groups():
    sel = select_groups(REWARDS, GROUPS, target_groups=3, refills=0, max_refills=2)
    assert sel.need_more and not sel.enough and not sel.limit_hit
    assert torch.equal(sel.keep, ~zero_variance_groups(REWARDS, GROUPS))


def test_select_at_limit_reports_and_tops_up():
    sel = select_groups(REWARDS, GROUPS, target_groups=3, refills=2, max_refills=2)
    assert sel.limit_hit and not sel.need_more and not sel.enough
    # the two informative groups plus the first zero-variance group (11) keep the batch at 3 groups
    assert torch.equal(sel.keep, torch.tensor([True, True, True, True, True, True, False, False]))
    assert (sel.num_groups, sel.num_informative) == (3, 2)
    sel = select_groups(REWARDS, GROUPS, target_groups=9, refills=0, max_refills=0)
    assert sel.limit_hit and sel.keep.all() and sel.num_groups == 4  # fewer groups than wanted exist


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("max_refills", [0, 2, 5])
def test_refill_loop_contract(seed, max_refills):
    """The module's loop: sample until enough informative groups or the refill limit."""
    gen = torch.Generator().manual_seed(seed)
    target, group_size, prompts = 4, 4, 4
    accuracy = torch.rand(1, generator=gen).item()  # some seeds make most groups zero-variance

    def sample(batch_index: int):
        groups = torch.arange(prompts).repeat_interleave(group_size) + 100 * batch_index  # ids unique per batch
        return (torch.rand(len(groups), generator=gen) < accuracy**2).float(), groups

    rewards, groups = sample(0)
    refills = 0
    while (sel := select_groups(rewards, groups, target, refills, max_refills)).need_more:
        new_rewards, new_groups = sample(refills + 1)
        rewards, groups = torch.cat([rewards, new_rewards]), torch.cat([groups, new_groups])
        refills += 1
    assert refills <= max_refills
    informative = ~zero_variance_groups(rewards, groups)
    assert sel.num_groups <= target
    assert len(groups[sel.keep].unique()) == sel.num_groups
    if not sel.limit_hit:
        assert sel.enough and sel.num_groups == target
        assert informative[sel.keep].all()  # never a zero-variance group
    else:
        assert refills == max_refills and sel.num_informative < target
        assert sel.num_informative == len(groups[sel.keep & informative].unique())


def test_select_errors():
    with pytest.raises(ValueError, match="target_groups >= 1"):
        select_groups(REWARDS, GROUPS, target_groups=0, refills=0, max_refills=1)
    with pytest.raises(ValueError, match="equal length"):
        zero_variance_groups(REWARDS, GROUPS[:3])


class _Rollouts:
    """The part of a `RolloutBatch` dynamic sampling reads: group ids, a device, selection."""

    def __init__(self, groups):
        self.groups = torch.tensor(groups)
        self.sequences = torch.zeros(len(groups), 1)

    def select(self, index):
        return _Rollouts(self.groups[index].tolist())


def _scores(verifier, user, correct):
    from clipo.rl.rewards import RewardScores

    return RewardScores(["verifier", "brevity"], torch.tensor([1.0, 1.0]), torch.tensor([verifier, user]).T,
                        torch.tensor(correct), ["p"] * len(correct))


@pytest.mark.parametrize("filter_on, kept_group", [("accuracy", 1), ("reward", 0)])
def test_dynamic_sampling_filters_on_accuracy_or_on_the_summed_reward(filter_on, kept_group):
    from clipo.rl.dynamic_sampling import DynamicSampling

    # group 0: every answer wrong, but a user reward varies (so the sum varies); group 1: one of two right
    rollouts = _Rollouts([0, 0, 1, 1])
    scores = _scores([0.0, 0.0, 1.0, 0.0], [0.1, 0.3, 0.2, 0.2], [False, False, True, False])
    kept, kept_scores, metrics = DynamicSampling(0, 0, filter_on).fill(rollouts, scores, 1, lambda: None)
    assert kept.groups.tolist() == [kept_group, kept_group] and metrics["dapo/refills"] == 0
    assert len(kept_scores.correct) == 2


def test_unknown_filter_signal_is_named():
    from clipo.rl.dynamic_sampling import DynamicSampling

    with pytest.raises(ValueError, match="sampling.filter_on='acc'"):
        DynamicSampling(0, 10, "acc")
