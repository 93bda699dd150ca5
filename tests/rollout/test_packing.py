import pytest
import torch

from clipo.rollout.packing import pack_by_tokens


def as_lists(batches):
    return [b.tolist() for b in batches]


def test_hand_example_longest_first_within_the_budget():
    lengths = torch.tensor([10, 3, 8, 2, 9, 4])
    # longest first: 10, 9 (2 x 10 = 20 fits; a third row would be 30) | 8, 4 (2 x 8 = 16; 3 x 8 = 24 does
    # not fit) | 3, 2 (2 x 3 = 6)
    assert as_lists(pack_by_tokens(lengths, 20)) == [[0, 4], [2, 5], [1, 3]]
    # budget 10: 10 | 9 | 8 | 4, 3 (2 x 4 = 8; a third row would be 12) | 2
    assert as_lists(pack_by_tokens(lengths, 10)) == [[0], [4], [2], [1, 5], [3]]
    assert as_lists(pack_by_tokens(lengths, 1000)) == [[0, 1, 2, 3, 4, 5]]


def test_whole_groups_stay_together():
    lengths = torch.tensor([10, 3, 8, 2, 9, 4])
    groups = torch.tensor([0, 0, 1, 1, 2, 2])  # groups' longest: 10, 8, 9; 2 rows each
    # budget 40: groups 0 and 2 (4 x 10 = 40; group 1 as well would be 60) | group 1
    assert as_lists(pack_by_tokens(lengths, 40, groups, whole_groups=True)) == [[0, 1, 4, 5], [2, 3]]
    # budget 20: group 0 (2 x 10) | group 2 (2 x 9; with group 1, 4 x 9 = 36) | group 1
    assert as_lists(pack_by_tokens(lengths, 20, groups, whole_groups=True)) == [[0, 1], [4, 5], [2, 3]]


def test_groups_in_order_of_their_longest_split_only_where_a_micro_batch_is_full():
    lengths = torch.tensor([10, 3, 8, 2, 9, 4])
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    # order: group 0 (10, 3), group 2 (9, 4), group 1 (8, 2); budget 30: 10, 3, 9 (3 x 10) | 4, 8, 2 (3 x 8 = 24)
    assert as_lists(pack_by_tokens(lengths, 30, groups)) == [[0, 1, 4], [2, 3, 5]]
    # without groups the rollouts are sorted by length alone: 10, 9, 8 | 4, 3, 2
    assert as_lists(pack_by_tokens(lengths, 30)) == [[0, 2, 4], [1, 3, 5]]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("grouped", [False, True])
def test_random_partition_respects_the_budget(seed, grouped):
    gen = torch.Generator().manual_seed(seed)
    n, group_size = 48, 4
    lengths = torch.randint(5, 200, (n,), generator=gen)
    groups = torch.arange(n) // group_size if grouped else None
    budget = 1000
    batches = pack_by_tokens(lengths, budget, groups, whole_groups=grouped)
    assert sorted(torch.cat(batches).tolist()) == list(range(n))  # every rollout exactly once
    for b in batches:
        assert len(b) * int(lengths[b].max()) <= budget
        if grouped:
            assert all((groups == g).sum() == (groups[b] == g).sum() for g in groups[b].unique())
    # longest first: each micro-batch's longest rollout is no longer than the previous one's
    longest = [int(lengths[b].max()) for b in batches]
    assert longest == sorted(longest, reverse=True)
    if grouped:  # splittable groups: each group spans at most two consecutive micro-batches
        split = pack_by_tokens(lengths, budget, groups)
        where = torch.empty(n, dtype=torch.long)
        for k, b in enumerate(split):
            where[b] = k
        spans = [where[groups == g] for g in range(n // group_size)]
        assert all(int(s.max() - s.min()) <= 1 for s in spans)


def test_budget_below_one_rollout_or_group_is_a_clear_error():
    lengths = torch.tensor([10, 30, 8])
    with pytest.raises(ValueError, match=r"max_tokens_per_micro_batch=20 is smaller than a rollout of 30 tokens.*30"):
        pack_by_tokens(lengths, 20)
    with pytest.raises(ValueError, match=r"a group of 2 rollouts up to 30 tokens \(60 padded tokens\).*60"):
        pack_by_tokens(lengths, 40, torch.tensor([0, 0, 1]), whole_groups=True)
    assert len(pack_by_tokens(lengths, 40, torch.tensor([0, 0, 1]))) == 2  # split groups: each rollout fits


def test_min_batches_halves_the_largest_so_every_rank_runs_as_many_passes():
    lengths = torch.tensor([10, 3, 8, 2, 9, 4])
    # one batch 10,9,8,4,3,2 -> halves 10,9,8 | 4,3,2 -> the first (ties: earliest) halved again: 10 | 9,8 | 4,3,2
    assert as_lists(pack_by_tokens(lengths, 1000, min_batches=3)) == [[0], [2, 4], [1, 3, 5]]
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    assert as_lists(pack_by_tokens(lengths, 1000, groups, whole_groups=True, min_batches=2)) == [[0, 1], [2, 3, 4, 5]]
    with pytest.raises(ValueError, match="cannot make 4 micro-batches"):
        pack_by_tokens(lengths, 1000, groups, whole_groups=True, min_batches=4)


def test_real_token_budget_counts_each_groups_prompt_once():
    lengths = torch.tensor([10, 3, 8, 2, 9, 4])  # prompt + response
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    prompts = torch.ones(6, dtype=torch.long)  # responses 9, 2 | 7, 1 | 8, 3
    # order 0, 1 | 4, 5 | 2, 3; budget 25: 1 + 9 + 2 = 12, + 1 + 8 = 21, + 3 = 24 | 1 + 7 + 1 = 9
    # (counted per rollout, or padded, the first four would be 26 or 40 tokens)
    assert as_lists(pack_by_tokens(lengths, 25, groups, prompt_lengths=prompts)) == [[0, 1, 4, 5], [2, 3]]
    assert as_lists(pack_by_tokens(lengths, 15, groups, prompt_lengths=prompts)) == [[0, 1], [4, 5], [2, 3]]
    with pytest.raises(ValueError, match="smaller than a group of 2 rollouts .12 tokens as the forward computes them"):
        pack_by_tokens(lengths, 11, groups, whole_groups=True, prompt_lengths=prompts)


def test_auto_budget_is_the_device_default_raised_to_the_largest_unit(monkeypatch):
    from clipo.rl import batching
    from clipo.rl.batching import AUTO_TOKENS, UpdateBatching, auto_token_budget
    from clipo.rollout.batch import RolloutBatch

    n, P, T = 4, 3, 5
    response_mask = torch.arange(T) < torch.tensor([5, 1, 2, 4])[:, None]  # [n, T]
    attention_mask = torch.cat([torch.tensor([[0, 1, 1]] * n), response_mask.long()], 1)  # prompts of 2 tokens
    batch = RolloutBatch(sequences=torch.ones(n, P + T, dtype=torch.long), attention_mask=attention_mask,
                         response_mask=response_mask, prompt_len=P, groups=torch.tensor([0, 0, 1, 1]),
                         responses=[""] * n, ground_truths=[""] * n, truncated=torch.zeros(n, dtype=torch.bool))
    index = torch.arange(n)
    assert auto_token_budget(torch.device("cpu"), batch, index, batch.groups) == AUTO_TOKENS["cpu"]
    monkeypatch.setattr(batching, "AUTO_TOKENS", dict(AUTO_TOKENS, cpu=1))
    # a unit larger than the default: a rollout of 7 tokens, whole groups of 2 + 5 + 1 and 2 + 4 + 2 tokens
    assert auto_token_budget(torch.device("cpu"), batch, index, None) == 7
    assert auto_token_budget(torch.device("cpu"), batch, index, batch.groups) == 8
    assert auto_token_budget(torch.device("cpu"), batch, index, batch.groups, real_tokens=False) == 2 * 7
    # varlen rows: each rollout with its own prompt, groups of 7 + 3 and 4 + 6 tokens
    assert auto_token_budget(torch.device("cpu"), batch, index, batch.groups, varlen=True) == 10
    parts = UpdateBatching(max_tokens_per_micro_batch="auto", padding_free=True).micro_batches(batch, index, n,
                                                                               whole_groups=True)
    assert as_lists(parts) == [[0, 1], [2, 3]]


def test_varlen_rows_count_every_rollouts_prompt_against_the_budget():
    from clipo.rl.batching import UpdateBatching
    from clipo.rollout.batch import RolloutBatch

    n, P, T = 4, 3, 4
    response_mask = torch.arange(T) < torch.tensor([4, 4, 4, 4])[:, None]
    attention_mask = torch.cat([torch.ones(n, P, dtype=torch.long), response_mask.long()], 1)  # 3 + 4 tokens each
    batch = RolloutBatch(sequences=torch.ones(n, P + T, dtype=torch.long), attention_mask=attention_mask,
                         response_mask=response_mask, prompt_len=P, groups=torch.zeros(n, dtype=torch.long),
                         responses=[""] * n, ground_truths=[""] * n, truncated=torch.zeros(n, dtype=torch.bool))
    index = torch.arange(n)
    # 16 tokens: the prefix-sharing rows fit 3 rollouts (3 + 3 x 4 = 15), varlen rows 2 (2 x 7 = 14)
    shared = UpdateBatching(max_tokens_per_micro_batch=16, padding_free=True).micro_batches(batch, index, n)
    varlen = UpdateBatching(max_tokens_per_micro_batch=16, padding_free=True, varlen=True).micro_batches(batch, index, n)
    assert [len(p) for p in shared] == [3, 1] and [len(p) for p in varlen] == [2, 2]
