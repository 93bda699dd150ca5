"""Importance sampling for the mismatch between the engine that sampled and the trainer.

An inference engine (vLLM) and the training forward compute slightly different probabilities for
the same tokens (other kernels, other numerics), so the rollouts come from `pi_sampler`, not from
the `pi_old` the PPO ratio assumes. Each policy-gradient term is re-weighted by the ratio
`pi_old / pi_sampler` (Yao et al. 2025, "Your efficient RL framework secretly brings you off-policy
RL training", https://fengyao.notion.site/off-policy-rl), as TRL's `vllm_importance_sampling_mode`
and verl's `algorithm.rollout_correction` do:

    level token      r_t = exp(logp_old_t - logp_sampler_t), one weight per token
    level sequence   r = exp(sum_t (logp_old_t - logp_sampler_t)), one weight for all of a sequence's tokens
    mode truncate    w = clamp(r, min_ratio, cap)             (TIS, Yao et al.: cap 2, no lower bound)
    mode mask        w = r inside [min_ratio, cap], 0 outside (rejection: the token or sequence is dropped;
                                                               min_ratio defaults to 1/cap)

`cap` and `min_ratio` are TRL's `vllm_importance_sampling_clip_max` / `_clip_min`: TRL 1.16's default
`vllm_importance_sampling_mode="sequence_mask"` with C_max 3 and no C_min is level sequence, mode
mask, cap 3, min_ratio 0.

A dropped term still counts in the loss's normaliser (TRL multiplies the per-token loss by the
weight). Shapes: `N` rollouts, `T` tokens.
"""

from __future__ import annotations

import torch

from clipo.algorithms.kl import token_kl
from clipo.ops import masked_mean

LEVELS = ("token", "sequence")
MODES = ("truncate", "mask")


def importance_weights(
    train_logprobs: torch.Tensor,
    sampling_logprobs: torch.Tensor,
    mask: torch.Tensor,
    cap: float,
    level: str = "token",
    mode: str = "truncate",
    min_ratio: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weights of each response token and mismatch metrics.

    Args:
        train_logprobs: [N, T] the trainer's log-probs of the sampled tokens before the update (pi_old).
        sampling_logprobs: [N, T] the engine's log-probs of the same tokens (pi_sampler).
        mask: [N, T] bool, true on response tokens.
        cap: >= 1; the truncation bound, or the mask's interval [1/cap, cap]. `inf` keeps every ratio.
        level: `token` or `sequence` (see the module docstring).
        mode: `truncate` or `mask`.
        min_ratio: the lower bound (truncate: raised to it; mask: dropped below it); None: none for
            truncate, 1/cap for mask.

    Returns:
        (weights [N, T] float32, detached, 1 off the mask; metrics over response tokens:
        `rollout_corr/logprob_diff_mean` and `_max` (|train - sampling|), `rollout_corr/kl` (k3 estimate
        of KL(pi_sampler || pi_old) on the sampler's tokens), `rollout_corr/weight_mean`, and
        `rollout_corr/capped_frac` (truncate: share of tokens whose weight a bound changed) or
        `rollout_corr/masked_frac` (mask: share of tokens dropped)).
    """
    _check(train_logprobs, sampling_logprobs, mask, cap, level, mode, min_ratio)
    mask = mask.bool()
    train, sampling = train_logprobs.detach().float(), sampling_logprobs.detach().float()
    log_ratio = torch.where(mask, train - sampling, 0.0)  # log(pi_old / pi_sampler) per token
    if level == "sequence":  # one ratio per sequence, on each of its tokens
        log_ratio = torch.where(mask, log_ratio.sum(-1, keepdim=True), 0.0)
    ratio = log_ratio.exp()
    if mode == "truncate":
        low = 0.0 if min_ratio is None else min_ratio
        weights, cut, cut_name = ratio.clamp(min=low, max=cap), (ratio > cap) | (ratio < low), "capped_frac"
    else:
        low = 1 / cap if min_ratio is None else min_ratio
        cut = (ratio > cap) | (ratio < low)
        weights, cut_name = torch.where(cut, 0.0, ratio), "masked_frac"
    token_diff = torch.where(mask, train - sampling, 0.0).abs()
    metrics = {
        "rollout_corr/logprob_diff_mean": masked_mean(token_diff, mask),
        "rollout_corr/logprob_diff_max": token_diff.max() if mask.any() else token_diff.new_zeros(()),
        "rollout_corr/kl": masked_mean(token_kl(sampling, train, "k3"), mask),
        "rollout_corr/weight_mean": masked_mean(weights, mask),
        f"rollout_corr/{cut_name}": masked_mean(cut.float(), mask),
    }
    return torch.where(mask, weights, 1.0), metrics


def _check(train: torch.Tensor, sampling: torch.Tensor, mask: torch.Tensor, cap: float, level: str, mode: str,
           min_ratio: float | None = None) -> None:
    if cap < 1:
        raise ValueError(f"the importance-weight cap must be >= 1 (TRL's default C_max is 3.0), got {cap}")
    if min_ratio is not None and not 0 <= min_ratio <= 1:
        raise ValueError(f"the importance-weight min_ratio must be in [0, 1] (0: no lower bound), got {min_ratio}")
    if level not in LEVELS or mode not in MODES:
        raise ValueError(f"importance sampling level={level!r}, mode={mode!r}: choose a level of {LEVELS} "
                         f"and a mode of {MODES}")
    if train.shape != sampling.shape or train.shape != mask.shape:
        shapes = f"{tuple(train.shape)}, {tuple(sampling.shape)}, {tuple(mask.shape)}"
        raise ValueError(f"train_logprobs, sampling_logprobs and mask must have one shape [N, T], got {shapes}")
