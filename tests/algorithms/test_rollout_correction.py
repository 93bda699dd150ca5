"""Truncated importance sampling: hand-computed weights and metrics, and an exact no-op when the
engine and the trainer agree."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from clipo.algorithms import DAPOLoss, GRPOLoss, GSPOLoss, StepNormalizer
from clipo.algorithms.rollout_correction import importance_weights
from tests.references.inputs import policy_batch
from tests.references.trl import trl_sampler_ratio

TRAIN = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -1.0, -7.0]])
SAMPLING = torch.tensor([[-1.0, -2.5, -0.1], [-1.3, -1.0, 3.0]])  # last token is padding
MASK = torch.tensor([[True, True, True], [True, True, False]])


def test_weights_and_metrics_by_hand():
    weights, metrics = importance_weights(TRAIN, SAMPLING, MASK, cap=2.0)
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


def test_sequence_level_truncate_by_hand():
    # per-sequence log ratio: 0 + 0.5 - 0.4 = 0.1 and 1.0 + 0 = 1.0 -> exp: 1.10517, 2.71828 -> cap 2
    weights, metrics = importance_weights(TRAIN, SAMPLING, MASK, cap=2.0, level="sequence")
    assert_close(weights, torch.tensor([[math.exp(0.1)] * 3, [2.0, 2.0, 1.0]]))  # padding keeps 1
    assert_close(metrics["rollout_corr/capped_frac"], torch.tensor(2 / 5))  # both tokens of sequence 2
    assert_close(metrics["rollout_corr/logprob_diff_mean"], torch.tensor(0.38))  # still per token


def test_token_mask_drops_ratios_outside_the_interval_by_hand():
    # token ratios 1, e^0.5=1.65, e^-0.4=0.67, e^1=2.72, 1 with cap 1.5: [1/1.5, 1.5] = [0.667, 1.5]
    # keeps 1, 0.6703 (just above 0.6667) and 1; drops 1.65 and 2.72
    weights, metrics = importance_weights(TRAIN, SAMPLING, MASK, cap=1.5, mode="mask")
    assert_close(weights, torch.tensor([[1.0, 0.0, math.exp(-0.4)], [0.0, 1.0, 1.0]]))
    assert_close(metrics["rollout_corr/masked_frac"], torch.tensor(2 / 5))
    assert "rollout_corr/capped_frac" not in metrics
    assert_close(metrics["rollout_corr/weight_mean"], torch.tensor((1 + math.exp(-0.4) + 1) / 5))


def test_sequence_mask_drops_whole_sequences_by_hand():
    # sequence ratios e^0.1 = 1.105 (kept, every token weighs 1.105) and e^1 = 2.718 > 2 (dropped)
    weights, metrics = importance_weights(TRAIN, SAMPLING, MASK, cap=2.0, level="sequence", mode="mask")
    assert_close(weights, torch.tensor([[math.exp(0.1)] * 3, [0.0, 0.0, 1.0]]))
    assert_close(metrics["rollout_corr/masked_frac"], torch.tensor(2 / 5))
    # a ratio below 1/cap is dropped too: the second sequence at e^-1 = 0.37 < 1/2
    low, _ = importance_weights(SAMPLING.where(MASK, 0.0), TRAIN.where(MASK, 0.0), MASK, cap=2.0,
                                level="sequence", mode="mask")
    assert_close(low[1, :2], torch.zeros(2))


def test_unknown_level_or_mode_is_named():
    with pytest.raises(ValueError, match="level='tokens'"):
        importance_weights(TRAIN, SAMPLING, MASK, cap=2.0, level="tokens")


def test_weights_are_detached_and_checked():
    train = TRAIN.clone().requires_grad_()
    weights, _ = importance_weights(train, SAMPLING, MASK, cap=2.0)
    assert not weights.requires_grad
    with pytest.raises(ValueError, match="cap must be >= 1"):
        importance_weights(TRAIN, SAMPLING, MASK, cap=0.5)
    with pytest.raises(ValueError, match="one shape"):
        importance_weights(TRAIN, SAMPLING[:, :2], MASK, cap=2.0)


@pytest.mark.parametrize("algorithm", [GRPOLoss(), DAPOLoss(), GSPOLoss(aggregation="seq-mean-token-sum")])
def test_identical_logprobs_leave_the_loss_exactly_unchanged(algorithm):
    torch.manual_seed(0)
    logprobs = -torch.rand(4, 5).requires_grad_()
    mask = torch.rand(4, 5) > 0.2
    advantages = torch.randn(4)
    norm = StepNormalizer.from_mask(mask)
    weights, metrics = importance_weights(logprobs, logprobs.detach().clone(), mask, cap=2.0)
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
    weights, _ = importance_weights(TRAIN, SAMPLING, MASK, cap=2.0)
    norm = StepNormalizer.from_mask(MASK)
    loss, metrics = GRPOLoss()(logprobs, TRAIN, advantages, MASK, norm, token_weights=weights)
    w = weights
    # row 0: -1 * (1 + 1.64872 + 0.67032) = -3.31904; row 1: +2 * (2 + 1) = 6; over 5 tokens: 0.536192
    expected = (-(w[0, 0] + w[0, 1] + w[0, 2]) + 2 * (w[1, 0] + w[1, 1])) / 5
    assert_close(loss, expected)
    assert_close(metrics["actor/pg_loss"], expected)
    with pytest.raises(ValueError, match="token_weights has shape"):
        GRPOLoss()(logprobs, TRAIN, advantages, MASK, norm, token_weights=weights[:, :2])


# ---- against TRL 1.16's own code (the inline block of `_generate_and_score_completions`) ------------
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("bounds", [(None, 3.0), (0.5, 3.0), (0.9, 1.2)])
@pytest.mark.parametrize("mode", ["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"])
def test_weights_equal_trls(mode, bounds, seed):
    """TRL's `vllm_importance_sampling_mode` with C_min / C_max is level, mode, min_ratio, cap here
    (TRL's default: sequence_mask, C_min None, C_max 3 = level sequence, mode mask, min_ratio 0, cap 3)."""
    b = policy_batch(seed)
    low, high = bounds
    level, kind = mode.split("_")
    theirs = trl_sampler_ratio(b.old, b.sampling, b.mask.long(), mode, low, high)  # [N, T] or [N, 1]
    ours, metrics = importance_weights(b.old, b.sampling, b.mask, high, level, kind, 0.0 if low is None else low)
    theirs = theirs.expand_as(ours)
    assert_close(torch.where(b.mask, ours, 0.0), torch.where(b.mask, theirs, 0.0), atol=1e-6, rtol=1e-5)
    if bounds == (0.9, 1.2):
        assert 0 < metrics["rollout_corr/masked_frac" if kind == "mask" else "rollout_corr/capped_frac"] < 1


def test_min_ratio_by_hand():
    # ratios [[1, 1.64872, 0.67032], [2.71828, 1]]; bounds [0.8, 2]
    weights, metrics = importance_weights(TRAIN, SAMPLING, MASK, cap=2.0, min_ratio=0.8)
    assert_close(weights, torch.tensor([[1.0, math.exp(0.5), 0.8], [2.0, 1.0, 1.0]]))  # truncate: raised to 0.8
    assert_close(metrics["rollout_corr/capped_frac"], torch.tensor(2 / 5))
    weights, metrics = importance_weights(TRAIN, SAMPLING, MASK, cap=2.0, mode="mask", min_ratio=0.8)
    assert_close(weights, torch.tensor([[1.0, math.exp(0.5), 0.0], [0.0, 1.0, 1.0]]))  # mask: dropped
    with pytest.raises(ValueError, match="min_ratio"):
        importance_weights(TRAIN, SAMPLING, MASK, cap=2.0, min_ratio=1.5)
