"""A(i), P(i), N(i), anchors and the positive draw, against naive loops from DESIGN.md."""

import pytest
import torch
from naive_contrastive import grouped_batch, naive_sets

from clipo.contrastive.sets import build_sets, sample_positives

SETTINGS = [
    (lvl, anc, skip) for lvl in ("group", "cross", "batch") for anc in ("correct", "all") for skip in (True, False)
]


def _as_sets(mask):
    return [set(torch.nonzero(row).flatten().tolist()) for row in mask]


@pytest.mark.parametrize("level,anchors,skip_trivial", SETTINGS)
@pytest.mark.parametrize("group_size", [4, 8])
def test_sets_match_naive_definition(level, anchors, skip_trivial, group_size):
    # one group for each number of correct rollouts 0..G, shuffled
    _, y, g = grouped_batch(group_size, list(range(group_size + 1)), seed=group_size)
    sets = build_sets(y, g, level, anchors, skip_trivial)
    cand, pos, neg, anchor_list = naive_sets(y, g, level, anchors, skip_trivial)
    assert _as_sets(sets.candidates) == cand
    assert _as_sets(sets.positives) == pos
    assert _as_sets(sets.negatives) == neg
    assert torch.nonzero(sets.anchors).flatten().tolist() == anchor_list
    assert all(m.dtype == torch.bool for m in sets)


def test_bool_and_float_labels_agree():
    y = torch.tensor([1.0, 0.0, 1.0, 1.0])
    g = torch.tensor([5, 5, 9, 9])
    for a, b in zip(build_sets(y, g), build_sets(y.bool(), g)):
        assert torch.equal(a, b)


def test_group_level_hand_example():
    # group 0: rollouts 0 (correct), 1 (correct), 2 (wrong); group 1: 3 (correct), 4 (wrong)
    y = torch.tensor([1, 1, 0, 1, 0])
    g = torch.tensor([0, 0, 0, 1, 1])
    sets = build_sets(y, g)
    assert _as_sets(sets.candidates)[0] == {1, 2}
    assert _as_sets(sets.positives)[0] == {1}
    assert _as_sets(sets.negatives)[3] == {4}
    # rollout 3 is correct but alone among its group's correct ones: |P| = 0, skipped
    assert sets.anchors.tolist() == [True, True, False, False, False]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"level": "prompt"}, "group, cross, batch"),
        ({"anchors": "wrong"}, "correct, all"),
    ],
)
def test_unknown_choices_list_the_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_sets(torch.tensor([1, 0]), torch.tensor([0, 0]), **kwargs)


def test_bad_labels_and_shapes_are_rejected():
    with pytest.raises(ValueError, match="0/1"):
        build_sets(torch.tensor([1.2, 0.0]), torch.tensor([0, 0]))
    with pytest.raises(ValueError, match=r"\[N\]"):
        build_sets(torch.tensor([1.0, 0.0]), torch.tensor([0, 0, 1]))


def test_sample_positives_stays_in_p_and_is_uniform():
    # row 0 has P = {1, 2, 3}, row 4 has P = {5}; draw 3000 times
    positives = torch.zeros(6, 6, dtype=torch.bool)
    positives[0, [1, 2, 3]] = True
    positives[4, 5] = True
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_positives(positives, gen) for _ in range(3000)])  # [3000, 6]
    assert (draws[:, 4] == 5).all()
    counts = torch.bincount(draws[:, 0], minlength=6)
    assert counts[[0, 4, 5]].sum() == 0
    # each of 3 positives: expected 1000, std ~ 26; 5 std bound
    assert ((counts[1:4] - 1000).abs() < 130).all(), counts


def test_sample_positives_is_reproducible_by_seed():
    positives = ~torch.eye(8, dtype=torch.bool)
    first = sample_positives(positives, torch.Generator().manual_seed(3))
    again = sample_positives(positives, torch.Generator().manual_seed(3))
    other = torch.stack([sample_positives(positives, torch.Generator().manual_seed(s)) for s in range(4, 8)])
    assert torch.equal(first, again)
    assert not (other == first).all(dim=1).all()
