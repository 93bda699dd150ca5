"""Truncated importance sampling: hand-computed weights and metrics, and an exact no-op when the
engine and the trainer agree."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from clipo.algorithms.rollout_correction import truncated_importance_weights
from clipo.algorithms import DAPOLoss, GRPOLoss, GSPOLoss, StepNormalizer

TRAIN = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -1.0, -7.0]])
SAMPLING = torch.tensor([[-1.0, -2.5, -0.1], [-1.3, -1.0, 3.0]])  # last token is padding
MASK = torch.tensor([[True, True, True], [True, True, False]])


def test_weights_and_metrics_by_hand():
    weights, metrics = truncated_importance_weights(TRAIN, SAMPLING, MASK, cap=2.0)
    # train - sampling = [[0, 0.5, -0.4], [1.0, 0, pad]]; exp = [[1, 1.64872, 0.67032], [2.71828 -> cap 2, 1]]
    assert_close(weights, torch.tensor([[1.0, math.exp(0.5), math.exp(-0.4)], [2.0, 1.0, 1.0]]))
    # |diff| over the 5 response tokens: (0 + 0.5 + 0.4 + 1.0 + 0) / 5 = 0.38, max 1.0
    assert_close(metrics["rollout_corr/logprob_diff_mean"], torch.tensor(0.38))
    assert_close(metrics["rollout_corr/logprob_diff_max"], torch.tensor(1.0))
    # k3 of KL(sampler || trainer) per token with d = train - sampling: exp(d) - d - 1
    # = 0, 0.148721, 0.070320, 0.718282, 0 -> mean 0.187465
    k3 = [math.exp(d) - d - 1 for d in (0.0, 0.5, -0.4, 1.0, 0.0)]
    assert_close(metrics["rollout_corr/kl"], torch.tensor(sum(k3) / 5))
    assert_close(metrics["rollout_corr/weight_mean"], torch.tensor((1 + math.exp(0.5) + math.exp(-0.4) + 2 + 1) / 5))
    assert_close(metrics["rollout_corr/capped_frac"], torch.tensor(0.2))


def test_weights_are_detached_and_checked():
    train = TRAIN.clone().requires_grad_()
    weights, _ = truncated_importance_weights(train, SAMPLING, MASK, cap=2.0)
    assert not weights.requires_grad
    with pytest.raises(ValueError, match="cap must be >= 1"):
        truncated_importance_weights(TRAIN, SAMPLING, MASK, cap=0.5)
    with pytest.raises(ValueError, match="one shape"):
        truncated_importance_weights(TRAIN, SAMPLING[:, :2], MASK, cap=2.0)


@pytest.mark.parametrize("algorithm", [GRPOLoss(), DAPOLoss(), GSPOLoss(aggregation="seq-mean-token-sum")])
def test_identical_logprobs_leave_the_loss_exactly_unchanged(algorithm):
    torch.manual_seed(0)
    logprobs = -torch.rand(4, 5).requires_grad_()
    mask = torch.rand(4, 5) > 0.2
    advantages = torch.randn(4)
    norm = StepNormalizer.from_mask(mask)
    weights, metrics = truncated_importance_weights(logprobs, logprobs.detach().clone(), mask, cap=2.0)
    assert torch.equal(weights, torch.ones_like(weights))
    assert metrics["rollout_corr/logprob_diff_max"] == 0 and metrics["rollout_corr/kl"] == 0
    plain, _ = algorithm(logprobs, logprobs.detach(), advantages, mask, norm)
    corrected, _ = algorithm(logprobs, logprobs.detach(), advantages, mask, norm, token_weights=weights)
    assert torch.equal(plain, corrected)
    (grad_plain,) = torch.autograd.grad(plain, logprobs)
    (grad_corrected,) = torch.autograd.grad(corrected, logprobs)
    assert torch.equal(grad_plain, grad_corrected)


def test_weights_scale_each_token_term_before_aggregation():
    # On-policy GRPO (old = current): every token's loss is -A_i (ratio 1, no clipping), so with
    # token-mean the weighted loss is -sum_it A_i w_it / tokens and the KL term is not weighted.
    logprobs = TRAIN.clone().requires_grad_()
    advantages = torch.tensor([1.0, -2.0])
    weights, _ = truncated_importance_weights(TRAIN, SAMPLING, MASK, cap=2.0)
    norm = StepNormalizer.from_mask(MASK)
    loss, metrics = GRPOLoss()(logprobs, TRAIN, advantages, MASK, norm, token_weights=weights)
    w = weights
    # row 0: -1 * (1 + 1.64872 + 0.67032) = -3.31904; row 1: +2 * (2 + 1) = 6; over 5 tokens: 0.536192
    expected = (-(w[0, 0] + w[0, 1] + w[0, 2]) + 2 * (w[1, 0] + w[1, 1])) / 5
    assert_close(loss, expected)
    assert_close(metrics["actor/pg_loss"], expected)
    with pytest.raises(ValueError, match="token_weights has shape"):
        GRPOLoss()(logprobs, TRAIN, advantages, MASK, norm, token_weights=weights[:, :2])
