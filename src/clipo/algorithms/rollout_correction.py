"""Truncated importance sampling (TIS) for the mismatch between the engine that sampled and the trainer.

An inference engine (vLLM) and the training forward compute slightly different probabilities for
the same tokens (other kernels, other numerics), so the rollouts come from `pi_sampler`, not from
the `pi_old` the PPO ratio assumes. Each token's policy-gradient term is re-weighted by
`min(pi_old / pi_sampler, cap)` (Yao et al. 2025, "Your efficient RL framework secretly brings you
off-policy RL training", https://fengyao.notion.site/off-policy-rl; TRL's
`vllm_importance_sampling_correction`, verl's rollout correction). Shapes: `N` rollouts, `T` tokens.
"""

from __future__ import annotations

import torch

from clipo.ops import masked_mean
from clipo.algorithms.kl import token_kl


def truncated_importance_weights(
    train_logprobs: torch.Tensor,
    sampling_logprobs: torch.Tensor,
    mask: torch.Tensor,
    cap: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Token weights `min(exp(train_logprobs - sampling_logprobs), cap)` and mismatch metrics.

    Args:
        train_logprobs: [N, T] the trainer's log-probs of the sampled tokens before the update (pi_old).
        sampling_logprobs: [N, T] the engine's log-probs of the same tokens (pi_sampler).
        mask: [N, T] bool, true on response tokens.
        cap: upper bound of a weight (TRL's default 2.0); must be >= 1.

    Returns:
        (weights [N, T] float32, detached, 1 off the mask; metrics over response tokens:
        `rollout_corr/logprob_diff_mean` and `_max` (|train - sampling|), `rollout_corr/kl` (k3 estimate
        of KL(pi_sampler || pi_old) on the sampler's tokens), `rollout_corr/weight_mean`,
        `rollout_corr/capped_frac` (share of tokens whose weight the cap lowered)).
    """
    if cap < 1:
        raise ValueError(f"the importance-weight cap must be >= 1 (TRL uses 2.0), got {cap}")
    if train_logprobs.shape != sampling_logprobs.shape or train_logprobs.shape != mask.shape:
        shapes = f"{tuple(train_logprobs.shape)}, {tuple(sampling_logprobs.shape)}, {tuple(mask.shape)}"
        raise ValueError(f"train_logprobs, sampling_logprobs and mask must have one shape [N, T], got {shapes}")
    mask = mask.bool()
    train, sampling = train_logprobs.detach().float(), sampling_logprobs.detach().float()
    log_ratio = torch.where(mask, train - sampling, 0.0)  # log(pi_old / pi_sampler)
    ratio = log_ratio.exp()
    weights = ratio.clamp(max=cap)
    diff = log_ratio.abs()
    metrics = {
        "rollout_corr/logprob_diff_mean": masked_mean(diff, mask),
        "rollout_corr/logprob_diff_max": diff.max() if mask.any() else diff.new_zeros(()),
        "rollout_corr/kl": masked_mean(token_kl(sampling, train, "k3"), mask),
        "rollout_corr/weight_mean": masked_mean(weights, mask),
        "rollout_corr/capped_frac": masked_mean((ratio > cap).float(), mask),
    }
    return weights, metrics
