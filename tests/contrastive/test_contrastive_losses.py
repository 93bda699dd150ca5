"""Every contrastive loss against the naive float64 reference of naive_contrastive.py.

InfoNCE's positive draw: the loss owns a CPU generator seeded with `seed` and calls
`sample_positives(P, generator)` once per call. The reference re-seeds a generator with the same
seed and makes the same call on the *naive* P(i) (equal to the loss's, see test_contrastive_sets),
checks every drawn index lies in P(i), and uses it. The draw itself (uniform over P(i)) is
tested in test_contrastive_sets.py.
"""

import math

import pytest
import torch
from naive_contrastive import grouped_batch, naive_loss, naive_sets

from clipo.contrastive.sets import sample_positives
from clipo.registry import LOSSES

NAMES = ["infonce", "supcon", "supcon_in", "soft_nn", "triplet"]
SETTINGS = [
    (lvl, anc, skip) for lvl in ("group", "cross", "batch") for anc in ("correct", "all") for skip in (True, False)
]


def reference(name, z, y, g, level, anchors, skip_trivial, temperature=0.05, margin=0.2, seed=0):
    positive_index = None
    if name == "infonce":
        _, pos, _, _ = naive_sets(y, g, level, anchors, skip_trivial)
        mask = torch.zeros(len(y), len(y), dtype=torch.bool)
        for i, p in enumerate(pos):
            mask[i, list(p)] = True
        positive_index = sample_positives(mask, torch.Generator().manual_seed(seed))
    per, batch = naive_loss(name, z, y, g, level, anchors, skip_trivial, temperature, margin, positive_index)
    return torch.tensor(per, dtype=torch.float32), torch.tensor(batch, dtype=torch.float32)


def build(name, **kwargs):
    if name == "triplet":  # distances, not similarities: a triplet loss takes no temperature
        kwargs.pop("temperature", None)
    return LOSSES.build({"name": name, **kwargs})


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("level,anchors,skip_trivial", SETTINGS)
@pytest.mark.parametrize("group_size", [4, 8])
def test_loss_matches_naive_reference(name, level, anchors, skip_trivial, group_size):
    # G+1 groups, with 0..G correct rollouts: covers 0, 1 and all correct
    z, y, g = grouped_batch(group_size, list(range(group_size + 1)), seed=group_size)
    settings = dict(level=level, anchors=anchors, skip_trivial=skip_trivial, seed=11)
    per, batch = build(name, **settings)(z, y, g)
    ref_per, ref_batch = reference(name, z, y, g, **settings)
    assert per.dtype == torch.float32 and per.shape == (len(y),) and batch.shape == ()
    torch.testing.assert_close(per, ref_per, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(batch, ref_batch, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_several_groups_of_mixed_composition(name):
    z, y, g = grouped_batch(8, [3, 5, 2, 6, 1, 7], dim=16, seed=5)
    per, batch = build(name, temperature=0.1, seed=4)(z, y, g)
    ref_per, ref_batch = reference(name, z, y, g, "group", "correct", True, temperature=0.1, seed=4)
    torch.testing.assert_close(per, ref_per, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(batch, ref_batch, atol=1e-4, rtol=1e-5)
    assert batch > 0


def test_triplet_margin_is_used():
    z, y, g = grouped_batch(4, [2, 1, 3], seed=2)
    per, _ = build("triplet", margin=0.7)(z, y, g)
    ref_per, _ = reference("triplet", z, y, g, "group", "correct", True, margin=0.7)
    torch.testing.assert_close(per, ref_per, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES + ["none"])
@pytest.mark.parametrize("correct", [[0, 0], [4, 4], [1, 0], [1, 4]])
def test_no_anchor_gives_exact_zero_and_zero_gradient(name, correct):
    # no group has both >= 2 correct and >= 1 wrong rollouts: no anchor at group level
    z, y, g = grouped_batch(4, correct, seed=1)
    z = z.clone().requires_grad_(True)
    per, batch = build(name)(z, y, g)
    assert batch.item() == 0.0 and torch.equal(per, torch.zeros_like(per))
    if batch.requires_grad:
        batch.backward()
        assert torch.equal(z.grad, torch.zeros_like(z))


@pytest.mark.parametrize("name", NAMES)
def test_gradient_is_finite_and_reaches_anchors(name):
    z, y, g = grouped_batch(8, [0, 3, 8, 1, 5], seed=3)
    z = z.clone().requires_grad_(True)
    _, batch = build(name)(z, y, g)
    batch.backward()
    assert torch.isfinite(z.grad).all()
    assert z.grad.abs().sum() > 0


def test_duplicate_embeddings_hand_values():
    # one group of 4, labels 1,1,1,0, all embeddings equal: s_ij = 1/tau for every pair.
    # anchor i has |A| = 3, |P| = 2, |N| = 1, and lse_A = 1/tau + log 3, so:
    #   infonce = supcon = supcon_in = log 3;  soft_nn = log 3 - log 2;  triplet: d = 0 -> margin
    z = torch.nn.functional.normalize(torch.ones(4, 5), dim=-1).requires_grad_(True)
    y = torch.tensor([1.0, 1.0, 1.0, 0.0])
    g = torch.zeros(4, dtype=torch.long)
    expected = {"infonce": math.log(3), "supcon": math.log(3), "supcon_in": math.log(3),
                "soft_nn": math.log(3) - math.log(2), "triplet": 0.2}
    for name, value in expected.items():
        per, batch = build(name)(z, y, g)
        want = torch.tensor([value, value, value, 0.0])
        torch.testing.assert_close(per, want, atol=1e-4, rtol=1e-5)
        (grad,) = torch.autograd.grad(batch, z)
        assert torch.isfinite(grad).all(), name


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs_are_computed_in_float32(name, dtype):
    z, y, g = grouped_batch(8, [2, 5, 7, 4], dim=32, seed=9)
    low = z.to(dtype)
    per, batch = build(name, seed=2)(low, y, g)
    assert per.dtype == torch.float32 and batch.dtype == torch.float32
    # exact arithmetic on the rounded inputs: float32 compute matches it closely ...
    ref_per, ref_batch = reference(name, low.float(), y, g, "group", "correct", True, seed=2)
    torch.testing.assert_close(per, ref_per, atol=2e-4, rtol=1e-5)
    # ... and the rounding of the inputs moves the loss little (|ds| <= ~0.01 / tau)
    _, full_batch = build(name, seed=2)(z, y, g)
    torch.testing.assert_close(batch, full_batch, atol=0.15, rtol=0.02)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("temperature", [0.02, 1e-3])
def test_small_temperature_does_not_overflow(name, temperature):
    # tau = 1e-3 puts logits at 1000: exp overflows float32 without the max shift
    z, y, g = grouped_batch(8, [2, 5, 7, 4], dim=4, seed=6)
    z = z.to(torch.float16).requires_grad_(True)
    per, batch = build(name, temperature=temperature, seed=1)(z, y, g)
    ref_per, _ = reference(name, z.detach().float(), y, g, "group", "correct", True, temperature=temperature, seed=1)
    torch.testing.assert_close(per, ref_per, atol=1e-4, rtol=1e-4)
    batch.backward()
    assert torch.isfinite(z.grad).all()


def test_infonce_draw_changes_between_calls_and_resumes_from_state_dict():
    z, y, g = grouped_batch(8, [4, 5, 3], seed=4)
    loss = build("infonce", seed=7)
    loss(z, y, g)
    state = loss.state_dict()
    after_a = [loss(z, y, g)[0] for _ in range(3)]
    resumed = build("infonce", seed=123)
    resumed.load_state_dict(state)
    after_b = [resumed(z, y, g)[0] for _ in range(3)]
    for a, b in zip(after_a, after_b):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    # with 3-4 positives per anchor, some draw must differ across the 3 calls
    assert not all(torch.equal(after_a[0], a) for a in after_a[1:])


def test_none_loss_is_disabled_and_returns_zeros():
    loss = build("none")
    assert loss.enabled is False and all(LOSSES.get(n).enabled for n in NAMES)
    per, batch = loss(torch.randn(5, 3), torch.ones(5), torch.zeros(5, dtype=torch.long))
    assert torch.equal(per, torch.zeros(5)) and batch.item() == 0.0


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"level": "global"}, "choose one of: group, cross, batch"),
        ({"anchors": "positive"}, "choose one of: correct, all"),
        ({"temperature": 0.0}, "temperature"),
    ],
)
@pytest.mark.parametrize("name", NAMES)
def test_bad_arguments_raise(name, kwargs, match):
    # a triplet loss has no temperature at all: passing one is a TypeError that names it
    with pytest.raises(TypeError if name == "triplet" and "temperature" in kwargs else ValueError, match=match):
        LOSSES.build({"name": name, **kwargs})


def test_embeddings_shape_is_checked():
    with pytest.raises(ValueError, match=r"\[N, E\]"):
        build("supcon")(torch.randn(3, 4), torch.ones(4), torch.zeros(4, dtype=torch.long))


def test_triplet_blocks_of_anchor_rows_give_the_same_loss():
    # max_elements=100 with N=20 forces blocks of one anchor row (20 blocks)
    from clipo.contrastive.functional import triplet_loss
    from clipo.contrastive.sets import build_sets

    z, y, g = grouped_batch(4, [1, 2, 3, 4, 0], seed=8)
    sets = build_sets(y, g, "batch", "all", False)
    per_blocked, batch_blocked = triplet_loss(z, sets, 0.2, max_elements=100)
    ref_per, ref_batch = reference("triplet", z, y, g, "batch", "all", False)
    torch.testing.assert_close(per_blocked, ref_per, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batch_blocked, ref_batch, atol=1e-5, rtol=1e-5)
