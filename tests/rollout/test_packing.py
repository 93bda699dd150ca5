"""Micro-batches packed by a token budget, counted by the forward plan's cost; and what every rank agrees on
(as many passes and LM-head chunks: stand-ins for a rank with fewer)."""

import pytest
import torch

from clipo.rl import batching as batching_module
from clipo.rl.batching import AUTO_TOKENS, UpdateBatching
from clipo.rollout.batch import RolloutBatch
from clipo.rollout.forward import ForwardLayout, TrainingForward
from clipo.rollout.packing import pack_by_tokens


def as_lists(batches):
    return [b.tolist() for b in batches]


def padded(lengths):
    """Rows x the longest rollout: the cost the tests below compute by hand."""
    return lambda rows: len(rows) * max(int(lengths[j]) for j in rows)


def test_hand_example_longest_first_within_the_budget():
    lengths = torch.tensor([10, 3, 8, 2, 9, 4])
    # longest first: 10, 9 (2 x 10 = 20 fits; a third row would be 30) | 8, 4 (2 x 8 = 16; 3 x 8 = 24 does
    # not fit) | 3, 2 (2 x 3 = 6)
    assert as_lists(pack_by_tokens(lengths, 20, padded(lengths))) == [[0, 4], [2, 5], [1, 3]]
    # budget 10: 10 | 9 | 8 | 4, 3 (2 x 4 = 8; a third row would be 12) | 2
    assert as_lists(pack_by_tokens(lengths, 10, padded(lengths))) == [[0], [4], [2], [1, 5], [3]]
    assert as_lists(pack_by_tokens(lengths, 1000, padded(lengths))) == [[0, 1, 2, 3, 4, 5]]


def test_whole_groups_stay_together():
    lengths = torch.tensor([10, 3, 8, 2, 9, 4])
    groups = torch.tensor([0, 0, 1, 1, 2, 2])  # groups' longest: 10, 8, 9; 2 rows each
    # budget 40: groups 0 and 2 (4 x 10 = 40; group 1 as well would be 60) | group 1
    assert as_lists(pack_by_tokens(lengths, 40, padded(lengths), groups, whole_groups=True)) == [[0, 1, 4, 5], [2, 3]]
    # budget 20: group 0 (2 x 10) | group 2 (2 x 9; with group 1, 4 x 9 = 36) | group 1
    assert as_lists(pack_by_tokens(lengths, 20, padded(lengths), groups, whole_groups=True)) == [[0, 1], [4, 5], [2, 3]]


def test_groups_in_order_of_their_longest_split_only_where_a_micro_batch_is_full():
    lengths = torch.tensor([10, 3, 8, 2, 9, 4])
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    # order: group 0 (10, 3), group 2 (9, 4), group 1 (8, 2); budget 30: 10, 3, 9 (3 x 10) | 4, 8, 2 (3 x 8 = 24)
    assert as_lists(pack_by_tokens(lengths, 30, padded(lengths), groups)) == [[0, 1, 4], [2, 3, 5]]
    # without groups the rollouts are sorted by length alone: 10, 9, 8 | 4, 3, 2
    assert as_lists(pack_by_tokens(lengths, 30, padded(lengths))) == [[0, 2, 4], [1, 3, 5]]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("grouped", [False, True])
def test_random_partition_respects_the_budget(seed, grouped):
    gen = torch.Generator().manual_seed(seed)
    n, group_size = 48, 4
    lengths = torch.randint(5, 200, (n,), generator=gen)
    groups = torch.arange(n) // group_size if grouped else None
    budget = 1000
    batches = pack_by_tokens(lengths, budget, padded(lengths), groups, whole_groups=grouped)
    assert sorted(torch.cat(batches).tolist()) == list(range(n))  # every rollout exactly once
    for b in batches:
        assert len(b) * int(lengths[b].max()) <= budget
        if grouped:
            assert all((groups == g).sum() == (groups[b] == g).sum() for g in groups[b].unique())
    # longest first: each micro-batch's longest rollout is no longer than the previous one's
    longest = [int(lengths[b].max()) for b in batches]
    assert longest == sorted(longest, reverse=True)
    if grouped:  # splittable groups: each group spans at most two consecutive micro-batches
        split = pack_by_tokens(lengths, budget, padded(lengths), groups)
        where = torch.empty(n, dtype=torch.long)
        for k, b in enumerate(split):
            where[b] = k
        spans = [where[groups == g] for g in range(n // group_size)]
        assert all(int(s.max() - s.min()) <= 1 for s in spans)


def test_budget_below_one_rollout_or_group_is_a_clear_error_unless_it_grows():
    lengths = torch.tensor([10, 30, 8])
    with pytest.raises(ValueError, match=r"max_tokens_per_micro_batch=20 is smaller than a rollout \(30 tokens.*30"):
        pack_by_tokens(lengths, 20, padded(lengths))
    groups = torch.tensor([0, 0, 1])
    with pytest.raises(ValueError, match=r"a group of 2 rollouts \(60 tokens .*whole groups must share.*at least 60"):
        pack_by_tokens(lengths, 40, padded(lengths), groups, whole_groups=True)
    assert len(pack_by_tokens(lengths, 40, padded(lengths), groups)) == 2  # split groups: each rollout fits
    # auto: the budget grows to the largest unit that must share a forward (the whole group of 60)
    assert as_lists(pack_by_tokens(lengths, 1, padded(lengths), groups, whole_groups=True, grow_budget=True)) == [
        [0, 1], [2]]


def batch_of(prompts, responses, groups, P=4, T=5):
    """Rollouts with these real prompt and response lengths (left-padded prompts, right-padded responses)."""
    n = len(prompts)
    response_mask = torch.arange(T) < torch.tensor(responses)[:, None]  # [n, T]
    prompt_mask = torch.arange(P).flip(0) < torch.tensor(prompts)[:, None]
    return RolloutBatch(sequences=torch.ones(n, P + T, dtype=torch.long),
                        attention_mask=torch.cat([prompt_mask, response_mask], 1).long(), response_mask=response_mask,
                        prompt_len=P, groups=torch.tensor(groups), prompts=[""] * n, responses=[""] * n, ground_truths=[""] * n,
                        truncated=torch.zeros(n, dtype=torch.bool))


@pytest.mark.parametrize("layout,sizes", [("shared_prompt", [3, 1]), ("varlen", [2, 2]), ("padded", [2, 2])])
def test_the_budget_counts_what_the_plans_layout_computes(layout, sizes):
    batch = batch_of([3] * 4, [4] * 4, [0] * 4)  # one group, 3 + 4 tokens each
    # 16 tokens: the shared prompt fits 3 rollouts (3 + 3 x 4 = 15), varlen rows and padded rows 2 (2 x 7 = 14)
    batching = UpdateBatching(TrainingForward(ForwardLayout(layout)), token_budget=16)
    parts = batching.micro_batches(batch, torch.arange(4), 4)
    assert [len(part.index) for part in parts] == sizes and not any(part.stand_in for part in parts)


def test_auto_budget_is_the_device_default_raised_to_whole_groups(monkeypatch):
    batch = batch_of([2] * 4, [5, 1, 2, 4], [0, 0, 1, 1])
    shared = TrainingForward(ForwardLayout.SHARED_PROMPT)
    default = UpdateBatching(shared, token_budget=AUTO_TOKENS["cpu"], grow_budget=True, whole_groups=True)
    assert [p.index.tolist() for p in default.micro_batches(batch, torch.arange(4), 4)] == [[0, 1, 2, 3]]
    # a budget below a whole group (2 + 5 + 5 = 12 tokens): it grows to it, and groups stay whole
    tiny_budget = UpdateBatching(shared, token_budget=1, grow_budget=True, whole_groups=True)
    assert [p.index.tolist() for p in tiny_budget.micro_batches(batch, torch.arange(4), 4)] == [[0, 1], [2, 3]]


def test_every_rank_runs_as_many_passes_and_head_chunks(monkeypatch):
    """Another rank needs 3 passes, with up to 5 LM-head chunks in its second: this one runs its 2 passes with
    the agreed chunks and a stand-in third pass."""
    batch = batch_of([2] * 4, [5, 1, 2, 4], [0, 0, 1, 1])
    other_rank = iter([torch.tensor(3), torch.tensor([1, 5, 2])])
    monkeypatch.setattr(batching_module, "max_over_ranks", lambda mine: torch.maximum(mine, next(other_rank)))
    batching = UpdateBatching(TrainingForward(ForwardLayout.SHARED_PROMPT, chunk_size=4), micro_batch_size=2)
    parts = batching.micro_batches(batch, torch.arange(4), 2)
    assert [p.index.tolist() for p in parts] == [[0, 1], [2, 3], [0]]
    assert [p.head_chunks for p in parts] == [2, 5, 2]  # 6 and 6 response tokens in chunks of 4: 2 each
    assert [p.stand_in for p in parts] == [False, False, True]
