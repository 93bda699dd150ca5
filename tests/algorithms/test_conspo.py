"""ConSPO (arXiv 2605.12969): Eq. 13 by hand, its gradient identities, the margin curriculum, dropped
groups, whole-group micro-batches and the extensions (token factors, shaping weights)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from clipo.algorithms import ConSPOLoss, LossInputs, StepNormalizer
from clipo.algorithms.conspo import conspo_margin, conspo_rollout_losses
from clipo.registry import ALGORITHMS
from tests.algorithms.test_algorithms import accumulation_setup, linear_policy_logprobs

PAD = 50.0  # padding log-probs: a leak into the scores would show


def hand_batch():
    """Group 7: positives with token log-probs [-0.2, -0.8] (s = -0.5) and [-1.0] (s = -1.0), negatives
    [-0.8, -0.8, -0.8] (s = -0.8) and [-3.0, -1.0] (s = -2.0); group 9: two positives, no negative."""
    logprobs = torch.tensor([
        [-0.2, -0.8, PAD], [-1.0, PAD, PAD], [-0.8, -0.8, -0.8], [-3.0, -1.0, PAD], [-0.3, PAD, PAD], [-0.1, -0.2, PAD],
    ])
    mask = logprobs != PAD
    groups = torch.tensor([7, 7, 7, 7, 9, 9])
    correct = torch.tensor([True, True, False, False, True, True])
    return logprobs, mask, groups, correct


def conspo_loss(algorithm, logprobs, mask, groups, correct, step=0, shaping=None, token_weights=None):
    norm = StepNormalizer.from_mask(mask, groups=groups, correct=correct)
    inputs = LossInputs(logprobs, logprobs.detach(), torch.zeros(len(groups)), mask, token_weights=token_weights,
                        groups=groups, correct=correct, shaping=shaping, step=step)
    return algorithm.loss(inputs, norm)


def test_eq13_by_hand():
    logprobs, mask, groups, correct = hand_batch()
    loss, metrics = conspo_loss(ConSPOLoss(tau=2.0, margin=0.1, alpha=0.0), logprobs, mask, groups, correct)
    # tau = 2, m = 0.1: e^{(-0.5-0.1)/2} = e^-0.3 = 0.740818, e^{(-1-0.1)/2} = e^-0.55 = 0.576950;
    # negatives e^{-0.8/2} = 0.670320, e^{-2/2} = 0.367879, sum 1.038200.
    # J_1 = 2 ln(0.740818 / (0.740818 + 1.038200)) = 2 ln(0.416419) = -1.752123
    # J_2 = 2 ln(0.576950 / (0.576950 + 1.038200)) = 2 ln(0.357211) = -2.058855
    # J(q) = (J_1 + J_2) / 2 = -1.905489; group 9 (no negative) is dropped: the loss is -J over 1 group
    j1 = 2 * math.log(math.exp(-0.3) / (math.exp(-0.3) + math.exp(-0.4) + math.exp(-1.0)))
    j2 = 2 * math.log(math.exp(-0.55) / (math.exp(-0.55) + math.exp(-0.4) + math.exp(-1.0)))
    assert_close(loss, torch.tensor(-(j1 + j2) / 2))
    assert_close(loss, torch.tensor(1.905489))
    assert_close(metrics["conspo/margin"], torch.tensor(0.1))
    # score gap: mean positive (-0.5 - 1.0) / 2 - mean negative (-0.8 - 2.0) / 2 = -0.75 + 1.4 = 0.65
    assert_close(metrics["conspo/score_gap"], torch.tensor(0.65))


def test_paper_defaults_and_registry():
    algorithm = ALGORITHMS.build({"name": "conspo"})
    assert (algorithm.tau, algorithm.margin, algorithm.alpha) == (10.0, 0.01, 0.3)
    assert algorithm.needs_whole_groups and not ALGORITHMS.get("grpo").needs_whole_groups
    with pytest.raises(ValueError, match="trainer.max_steps"):
        ConSPOLoss(total_steps=-1)


def scores_and_labels(seed: int):
    gen = torch.Generator().manual_seed(seed)
    groups = torch.arange(24) // 6
    correct = torch.rand(24, generator=gen) < 0.5
    correct[::6], correct[1::6] = True, False  # every group mixed
    return (torch.randn(24, generator=gen) - 1).requires_grad_(), groups, correct


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("tau", [0.5, 10.0])
def test_gradient_identities(seed, tau):
    scores, groups, correct = scores_and_labels(seed)
    margin = 0.3
    losses, mixed = conspo_rollout_losses(scores, groups, correct, tau, margin)
    (grad,) = torch.autograd.grad(losses.sum(), scores)
    # Eq. 11: within each group the derivatives w.r.t. the scores cancel (positives up, negatives down)
    for g in groups.unique():
        members = groups == g
        assert abs(float(grad[members].sum())) < 1e-6
        assert (grad[members & correct] < 0).all() and (grad[members & ~correct] > 0).all()
    # and each is the closed form, with no 1/tau: d(-J)/ds_i = -(1 - p_i) / |P|, d(-J)/ds_j = sum_i q_ij / |P|
    s = scores.detach().double()
    for g in groups.unique():
        pos, neg = torch.where((groups == g) & correct)[0], torch.where((groups == g) & ~correct)[0]
        numerators = ((s[pos] - margin) / tau).exp()  # [P]
        z = numerators + (s[neg] / tau).exp().sum()  # [P]
        assert_close(grad[pos].double(), -(1 - numerators / z) / len(pos))
        assert_close(grad[neg].double(), ((s[neg] / tau).exp().unsqueeze(0) / z.unsqueeze(-1)).sum(0) / len(pos))
    assert mixed.all()


def test_margin_is_in_numerator_and_denominator():
    scores, groups, correct = scores_and_labels(3)
    tau, margin = 1.0, 0.5
    losses, _ = conspo_rollout_losses(scores.detach(), groups, correct, tau, margin)
    s = scores.detach()
    i = int(torch.where(correct)[0][0])
    negatives = (groups == groups[i]) & ~correct
    positives = int(((groups == groups[i]) & correct).sum())
    shifted = (s[i] - margin) / tau
    expected = -tau * (shifted - torch.logsumexp(torch.cat([shifted.view(1), s[negatives] / tau]), 0)) / positives
    assert_close(losses[i], expected)
    # with the margin only in the numerator the value would differ
    wrong = -tau * (shifted - torch.logsumexp(torch.cat([(s[i] / tau).view(1), s[negatives] / tau]), 0)) / positives
    assert not torch.isclose(losses[i], wrong)


def test_margin_curriculum():
    # m = (M/2)(1 - cos(pi rho)), rho = min(step / (alpha T), 1); M = 0.01, alpha = 0.3, T = 100
    assert conspo_margin(0.01, 0.3, 0, 100) == 0.0
    assert conspo_margin(0.01, 0.3, 15, 100) == pytest.approx(0.005)  # rho = 0.5: (0.01/2)(1 - cos(pi/2))
    assert conspo_margin(0.01, 0.3, 30, 100) == pytest.approx(0.01)  # rho = 1
    assert conspo_margin(0.01, 0.3, 90, 100) == pytest.approx(0.01)  # held after alpha
    assert conspo_margin(0.01, 0.0, 0, 100) == conspo_margin(0.01, 0.3, 0, None) == pytest.approx(0.01)  # fixed
    logprobs, mask, groups, correct = hand_batch()
    early = conspo_loss(ConSPOLoss(total_steps=100), logprobs, mask, groups, correct, step=0)[1]["conspo/margin"]
    late = conspo_loss(ConSPOLoss(total_steps=100), logprobs, mask, groups, correct, step=60)[1]["conspo/margin"]
    assert float(early) == 0.0 and float(late) == pytest.approx(0.01)


def test_dropped_groups_and_normaliser():
    logprobs, mask, groups, correct = hand_batch()
    algorithm = ConSPOLoss(tau=2.0, margin=0.1, alpha=0.0)
    alone, _ = conspo_loss(algorithm, logprobs[:4], mask[:4], groups[:4], correct[:4])
    both, _ = conspo_loss(algorithm, logprobs, mask, groups, correct)
    assert_close(alone, both)  # group 9 adds nothing, and is not counted
    leaf = logprobs.clone().requires_grad_()
    loss, _ = conspo_loss(algorithm, leaf, mask, groups, correct)
    loss.backward()
    assert (leaf.grad[4:] == 0).all() and (leaf.grad[~mask] == 0).all()
    nothing, metrics = conspo_loss(algorithm, logprobs[4:], mask[4:], groups[4:], correct[4:])
    assert nothing == 0 and metrics["conspo/score_gap"] == 0


def test_score_is_length_normalised():
    logprobs, mask, groups, correct = hand_batch()
    leaf = logprobs.clone().requires_grad_()
    conspo_loss(ConSPOLoss(tau=2.0, margin=0.1, alpha=0.0), leaf, mask, groups, correct)[0].backward()
    # each token of a response gets 1/|o| of its score's derivative
    assert_close(leaf.grad[0, 0], leaf.grad[0, 1])
    assert_close(leaf.grad[2, :3], leaf.grad[2, :1].expand(3))


@pytest.mark.parametrize("split", [[0, 6, 12, 18, 24], [0, 12, 24], [0, 18, 24]])
def test_whole_group_micro_batches_equal_the_full_batch(split):
    weight, features, tokens, _, _, _, _ = accumulation_setup(seed=6)
    gen = torch.Generator().manual_seed(11)
    n = 24
    features, tokens = torch.randn(n, 6, 5, generator=gen), torch.randint(7, (n, 6), generator=gen)
    mask = torch.arange(6) < torch.randint(1, 7, (n, 1), generator=gen)
    groups, correct = torch.arange(n) // 6, torch.rand(n, generator=gen) < 0.5
    correct[:6] = True  # one group without negatives
    algorithm = ConSPOLoss(tau=10.0, margin=0.01, total_steps=10)
    norm = StepNormalizer.from_mask(mask, groups=groups, correct=correct)

    def loss_of(index):
        logprobs = linear_policy_logprobs(weight, features[index], tokens[index])
        inputs = LossInputs(logprobs, logprobs.detach(), torch.zeros(len(index)), mask[index], groups=groups[index],
                            correct=correct[index], step=2)
        return algorithm.loss(inputs, norm)[0]

    full = loss_of(torch.arange(n))
    (full_grad,) = torch.autograd.grad(full, weight)
    total = 0.0
    for start, end in zip(split, split[1:]):
        part = loss_of(torch.arange(start, end))
        part.backward()
        total = total + part.detach()
    assert_close(total, full.detach())
    assert_close(weight.grad, full_grad)
    assert full_grad.abs().sum() > 1e-4


def test_shaping_weights_and_token_factors():
    logprobs, mask, groups, correct = hand_batch()
    algorithm = ConSPOLoss(tau=2.0, margin=0.1, alpha=0.0)
    plain, _ = conspo_loss(algorithm, logprobs, mask, groups, correct)
    unshaped, _ = conspo_loss(algorithm, logprobs, mask, groups, correct, shaping=torch.zeros(6))
    assert_close(unshaped, plain)  # no shaping: weight 1, the paper's loss
    # CLIPO's bonus -0.5 on the first positive halves its term: -(0.5 J_1 + J_2) / 2
    shaped, _ = conspo_loss(algorithm, logprobs, mask, groups, correct, shaping=torch.tensor([-0.5, 0, 0, 0, 0, 0]))
    assert_close(shaped, torch.tensor(-(0.5 * -1.752123 + -2.058855) / 2))
    # token factors scale each token's gradient share, not the score's value
    leaf = logprobs.clone().requires_grad_()
    weights = torch.ones(6, 3)
    weights[0, 1] = 0.0
    weighted, _ = conspo_loss(algorithm, leaf, mask, groups, correct, token_weights=weights)
    weighted.backward()
    assert_close(weighted, plain)
    assert leaf.grad[0, 1] == 0 and leaf.grad[0, 0] != 0
