"""ContrastiveObjective and its two mode adapters: gradient routing per mode, the reward bonus, metrics
and validation."""

import math

import pytest
import torch
from naive_contrastive import grouped_batch

from clipo.contrastive import (
    ContrastiveLossTerm,
    ContrastiveObjective,
    ContrastiveRewardShaping,
    HeadStep,
    build_sets,
    contrastive_reward,
    similarity_stats,
)
from clipo.registry import HEADS, LOSSES, POOLERS

D_IN, D, T = 6, 10, 5


def make_batch(seed=0):
    """A tiny 'policy' (one Linear) and the hidden states it produces for 3 groups of 4."""
    torch.manual_seed(seed)
    policy = torch.nn.Linear(D_IN, D)
    _, y, g = grouped_batch(4, [2, 3, 1], seed=seed)
    hidden = policy(torch.randn(len(y), T, D_IN))  # [N, T, D]
    mask = torch.ones(len(y), T, dtype=torch.bool)
    mask[::2, 3:] = False  # right padding on every other row
    return policy, hidden, mask, y, g


def make_objective(loss="supcon", pooler="attention", head="linear"):
    return ContrastiveObjective(
        POOLERS.build({"name": pooler, "hidden_size": D}),
        HEADS.build({"name": head, "dim": 8}, in_dim=D),
        LOSSES.build({"name": loss}),
    )


class GradientSpy(torch.optim.SGD):
    """SGD at lr 0 that keeps, at each step, which of its parameters had a non-zero gradient."""

    def __init__(self, params):
        super().__init__(params, lr=0.0)
        self.nonzero = []

    def step(self, closure=None):
        self.nonzero.append([p.grad is not None and p.grad.abs().sum() > 0 for g in self.param_groups for p in g["params"]])
        return super().step(closure)


def make_shaping(objective=None, **kwargs):
    objective = objective or make_objective()
    head_step = HeadStep(objective, GradientSpy)
    head_step.configure()
    return ContrastiveRewardShaping(objective, head_step, **kwargs)


def test_reward_mode_keeps_gradient_away_from_the_policy():
    policy, hidden, mask, y, g = make_batch()
    shaping = make_shaping()
    shaped, out = shaping(hidden, mask, y.bool(), g, y)
    assert policy.weight.grad is None and policy.bias.grad is None
    assert all(shaping.head_step.optimizer.nonzero[0])  # head and attention pooler got their gradient
    assert not shaped.requires_grad and not out.bonus.requires_grad and not out.loss.requires_grad


def test_loss_mode_reaches_the_policy():
    policy, hidden, mask, y, g = make_batch()
    objective = make_objective()
    term = ContrastiveLossTerm(objective, HeadStep(objective, torch.optim.SGD), coef=0.3, hidden_layer=-1)
    loss, metrics = term(hidden, mask, y, g, len(y), len(y))
    torch.testing.assert_close(loss, 0.3 * metrics["contrastive/loss"])
    loss.backward()
    assert policy.weight.grad.abs().sum() > 0
    assert objective.head.proj.weight.grad.abs().sum() > 0
    assert "contrastive/reward_bonus" not in metrics  # loss mode adds no bonus


def test_bonus_formula_by_hand():
    per_sample = torch.tensor([0.0, 1.0, 3.0, 10.0, 2.0])
    labels = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0])
    # correct: max(0 - 0.2 L, -0.5) -> 0, -0.2, max(-0.6, -0.5) = -0.5, (wrong) 0, -0.4
    torch.testing.assert_close(contrastive_reward(per_sample, labels), torch.tensor([0.0, -0.2, -0.5, 0.0, -0.4]))
    # c = 0.1, lam = 0.5, floor = -1: 0.1, -0.4, max(-1.4, -1) = -1, 0, -0.9
    torch.testing.assert_close(
        contrastive_reward(per_sample, labels, lam=0.5, c=0.1, floor=-1.0), torch.tensor([0.1, -0.4, -1.0, 0.0, -0.9])
    )


def test_objective_bonus_uses_its_own_losses():
    _, hidden, mask, y, g = make_batch(1)
    shaping = make_shaping(lam=0.5, c=0.1, floor=-2.0)
    per_sample = shaping.objective(hidden, mask, y, g).per_sample.detach()  # before the head's step (lr 0 here)
    shaped, out = shaping(hidden, mask, y.bool(), g, y)
    expected = torch.where(y == 1, torch.clamp(0.1 - 0.5 * per_sample, min=-2.0), torch.zeros_like(y))
    torch.testing.assert_close(out.bonus, expected)
    torch.testing.assert_close(shaped, y + expected)
    torch.testing.assert_close(out.metrics["contrastive/reward_bonus"], expected[y == 1].mean())


def test_metrics_by_hand():
    _, hidden, mask, y, g = make_batch(2)
    _, out = make_shaping(make_objective())(hidden, mask, y.bool(), g, y)
    # groups with 2, 3, 1 correct of 4: anchors are correct rollouts with a fellow correct one: 2 + 3
    assert out.metrics["contrastive/anchor_frac"].item() == pytest.approx(5 / 12)
    assert all(not v.requires_grad and v.shape == () and torch.isfinite(v) for v in out.metrics.values())
    assert set(out.metrics) == {
        "contrastive/loss", "contrastive/anchor_frac",
        "contrastive/pos_cos_hidden", "contrastive/neg_cos_hidden",
        "contrastive/pos_cos_embed", "contrastive/neg_cos_embed", "contrastive/reward_bonus",
        "contrastive/pos_pairs", "contrastive/neg_pairs",
    }
    # positive pairs: 2 anchors x 1 fellow + 3 anchors x 2 fellows = 8; negative: 2 x 2 + 3 x 1 = 7
    assert out.metrics["contrastive/pos_pairs"].item() == 8 and out.metrics["contrastive/neg_pairs"].item() == 7


def test_similarity_stats_by_hand():
    # one group, labels 1, 1, 0: anchors 0 and 1. x0 = (1, 0), x1 = (3, 4), x2 = (0, -2)
    # positive pairs (0,1), (1,0): cos = 3/5 = 0.6; negative pairs (0,2): 0, (1,2): -8/10 = -0.8 -> -0.4
    x = torch.tensor([[1.0, 0.0], [3.0, 4.0], [0.0, -2.0]])
    sets = build_sets(torch.tensor([1, 1, 0]), torch.zeros(3, dtype=torch.long))
    stats = similarity_stats(x, sets)
    torch.testing.assert_close(stats["pos_cos"], torch.tensor(0.6))
    torch.testing.assert_close(stats["neg_cos"], torch.tensor(-0.4))
    assert stats["pos_pairs"].item() == 2 and stats["neg_pairs"].item() == 2
    # no anchor: the documented sentinel 0.0 and zero pairs, never NaN
    empty = similarity_stats(x, build_sets(torch.tensor([0, 0, 0]), torch.zeros(3, dtype=torch.long)))
    assert empty["pos_cos"].item() == 0.0 and empty["neg_pairs"].item() == 0


def test_no_anchor_batch_is_zero_and_nan_free():
    _, hidden, mask, _, g = make_batch()
    objective = make_objective()
    out = objective(hidden, mask, torch.zeros(len(g)), g)
    assert out.batch_loss.item() == 0.0
    out.batch_loss.backward()
    assert torch.equal(objective.head.proj.weight.grad, torch.zeros_like(objective.head.proj.weight))
    assert all(torch.isfinite(v) for v in out.metrics.values())


def test_warmup_holds_the_policy_in_reward_mode_only():
    # the official count (verl's critic_warmup <= global_steps, steps from 1): warm-up 3 means the
    # policy first updates at step 3, i.e. 0-based step 2, after 2 head-only steps
    shaping = make_shaping(head_warmup_steps=3)
    assert [shaping.policy_waits(s) for s in range(4)] == [True, True, False, False]
    for warmup in (0, 1):  # both: the policy updates from the first step
        assert not make_shaping(head_warmup_steps=warmup).policy_waits(0)
    assert not hasattr(ContrastiveLossTerm, "policy_waits")  # loss mode never holds the policy


def test_infonce_generator_state_travels_in_the_objective_state_dict():
    _, hidden, mask, y, g = make_batch(3)
    first = make_objective(loss="infonce")
    first(hidden, mask, y, g)
    state = first.state_dict()
    assert "loss._extra_state" in state
    second = make_objective(loss="infonce")
    second.load_state_dict(state)
    for _ in range(3):
        torch.testing.assert_close(first(hidden, mask, y, g).per_sample, second(hidden, mask, y, g).per_sample)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"floor": 0.5}, "floor"),
        ({"lam": -1.0}, "lam"),
        ({"head_warmup_steps": -1}, "head_warmup_steps"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_shaping(**kwargs)
    with pytest.raises(ValueError, match="coef"):
        ContrastiveLossTerm(make_objective(), None, coef=-1.0, hidden_layer=-1)


def test_enabled_loss_without_head_is_rejected():
    pooler = POOLERS.build({"name": "mean", "hidden_size": D})
    with pytest.raises(ValueError, match="needs a head"):
        ContrastiveObjective(pooler, None, LOSSES.build({"name": "supcon"}))


def test_bonus_has_the_floor_and_zero_for_wrong_rollouts():
    _, hidden, mask, y, g = make_batch(4)
    _, out = make_shaping(lam=100.0)(hidden, mask, y.bool(), g, y)  # lam * L > 0.5 wherever L > 0.005: the floor
    clipped = out.loss > 0.005
    assert (out.bonus[clipped] == -0.5).all() and clipped.any()
    assert (out.bonus[y == 0] == 0).all()
    assert not math.isnan(out.metrics["contrastive/reward_bonus"].item())


def test_similarity_metrics_are_taken_in_hidden_and_embedding_space():
    # mean pooler: the hidden-space statistics are those of the masked token mean, computed here
    _, hidden, mask, y, g = make_batch(5)
    objective = make_objective(pooler="mean")
    out = objective(hidden, mask, y, g)
    m = mask.float()[..., None]
    pooled = ((hidden * m).sum(1) / m.sum(1)).detach()
    sets = build_sets(y, g)
    hidden_stats = similarity_stats(pooled, sets)
    embed_stats = similarity_stats(objective.head(pooled), sets)
    for space, stats in (("hidden", hidden_stats), ("embed", embed_stats)):
        torch.testing.assert_close(out.metrics[f"contrastive/pos_cos_{space}"], stats["pos_cos"])
        torch.testing.assert_close(out.metrics[f"contrastive/neg_cos_{space}"], stats["neg_cos"])
    assert not torch.isclose(hidden_stats["pos_cos"], embed_stats["pos_cos"])


def test_head_gradient_over_ranks_is_that_of_the_mean_over_all_anchors(monkeypatch):
    """Two ranks with 2 and 3 anchors: `HeadStep` averages their gradients, so each weighs its batch loss
    by its share of the anchors (`anchor_share`); the plain mean of the ranks' means would not do."""
    import clipo.contrastive.modes as modes

    _, hidden, mask, y, g = make_batch()  # groups with 2, 3, 1 correct of 4: 2, 3 and 0 anchors
    hidden, objective = hidden.detach(), make_objective()  # reward mode: the states are detached

    def head_grads(loss):
        objective.zero_grad()
        loss.backward()
        return [p.grad.clone() for p in objective.parameters()]

    whole = head_grads(objective(hidden, mask, y, g).batch_loss)  # one process, every anchor
    ranks = [g == 3, g != 3]  # group 3 has 2 anchors; groups 10 and 17 have 3 and 0
    outs = [objective(hidden[r], mask[r], y[r], g[r]) for r in ranks]
    assert [int(o.anchors) for o in outs] == [2, 3]
    monkeypatch.setattr(modes, "world", lambda: (0, 2))
    monkeypatch.setattr(modes, "sum_over_ranks", lambda anchors: torch.tensor(5.0))
    weighted = [head_grads(objective(hidden[r], mask[r], y[r], g[r]).batch_loss * modes.anchor_share(o.anchors))
                for r, o in zip(ranks, outs)]
    for averaged, reference in zip(map(lambda pair: (pair[0] + pair[1]) / 2, zip(*weighted)), whole):
        torch.testing.assert_close(averaged, reference, atol=1e-6, rtol=1e-5)
    plain = [head_grads(objective(hidden[r], mask[r], y[r], g[r]).batch_loss) for r in ranks]
    assert not torch.allclose((plain[0][0] + plain[1][0]) / 2, whole[0], atol=1e-6)  # the mean of the means
