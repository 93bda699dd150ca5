"""Per-token clipped objectives as pure functions: PPO/GRPO, GSPO, GMPO.

Shapes: `N` rollouts, `T` response tokens, `mask[N, T]` true on response tokens.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from clipo.ops import masked_mean


class TokenLosses(NamedTuple):
    """What an objective returns before aggregation (all [N, T])."""

    losses: torch.Tensor  # per-token loss
    clipped_low: torch.Tensor  # bool: A < 0 and the ratio is clipped from below (no gradient)
    clipped_high: torch.Tensor  # bool: A > 0 and the ratio is clipped from above (no gradient)
    ratio: torch.Tensor  # the importance ratio the objective clips, for logging
    clipped_dual: torch.Tensor | None = None  # bool: A < 0 and the dual clip bound is active


def clipped_surrogate(
    ratio: torch.Tensor, advantages: torch.Tensor, clip_low: float, clip_high: float, clip_c: float | None = None
) -> TokenLosses:
    """PPO clipped loss `max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high))`, optionally dual-clipped.

    PPO: Schulman et al. 2017, https://arxiv.org/abs/1707.06347. Dual clip (Ye et al. 2019,
    https://arxiv.org/abs/1912.09729): for A < 0 the loss is further capped at `-A * clip_c`.

    Args:
        ratio: [N, T] importance ratios (with gradient).
        advantages: [N, 1] or [N, T] advantages.
    """
    unclipped = -advantages * ratio
    losses = torch.maximum(unclipped, -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high))
    high = (advantages > 0) & (ratio > 1.0 + clip_high)
    low = (advantages < 0) & (ratio < 1.0 - clip_low)
    dual = None
    if clip_c is not None:
        bound = -advantages * clip_c
        dual = (advantages < 0) & (losses > bound)
        losses = torch.where(dual, bound, losses)
    return TokenLosses(losses, low, high, ratio.detach(), dual)


def ppo_token_losses(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    clip_low: float,
    clip_high: float,
    clip_c: float | None = None,
) -> TokenLosses:
    """Token-level PPO/GRPO/DAPO objective; `advantages` [N] is broadcast over tokens."""
    ratio = (logprobs - old_logprobs).clamp(-20.0, 20.0).exp()  # clamp: exp overflow on stale tokens
    return clipped_surrogate(ratio, advantages.unsqueeze(-1), clip_low, clip_high, clip_c)


def gspo_token_losses(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float,
    clip_high: float,
) -> TokenLosses:
    """GSPO: clip the sequence ratio `s_i = exp(mean_t log(pi / pi_old))` over response tokens.

    Zheng et al. 2025, https://arxiv.org/abs/2507.18071. The gradient flows through the
    token-level form `s_it = sg[s_i] * pi(y_t) / sg[pi(y_t)]` (GSPO-token, Sec. 4.3), whose value
    equals `s_i` and whose gradient with seq-mean-token-mean aggregation is GSPO's.
    """
    seq_log_ratio = masked_mean(logprobs - old_logprobs, mask, dim=-1)  # [N]
    token_form = logprobs - logprobs.detach() + seq_log_ratio.detach().unsqueeze(-1)  # [N, T]
    return clipped_surrogate(token_form.clamp(max=10.0).exp(), advantages.unsqueeze(-1), clip_low, clip_high)


def gmpo_token_losses(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float,
    clip_high: float,
) -> TokenLosses:
    """GMPO: maximise the geometric mean of token ratios, clipped per token in log space.

    Zhao et al. 2025, https://arxiv.org/abs/2507.20673, the J_GMPO objective (Sec. 3)
    `(1/G) sum_i (prod_t |min(r_it A_i, clip(r_it, e^-clip_low, e^clip_high) A_i)|)^(1/|o_i|) sgn(A_i)`,
    computed as the authors' code does, in log space:
    `l_it = sgn(A_i) * min(sgn(A_i) log r_it, sgn(A_i) clip(log r_it, -clip_low, clip_high))`,
    `loss_i = -A_i * exp(mean_t l_it)`. The sequence loss is placed on each of its tokens, so
    seq-mean-token-mean aggregation gives exactly the paper's `(1/G) sum_i`.
    """
    log_ratio = (logprobs - old_logprobs).clamp(-20.0, 20.0)
    sign = advantages.sign().unsqueeze(-1)  # [N, 1]
    clipped = log_ratio.clamp(-clip_low, clip_high)
    pessimistic = sign * torch.minimum(sign * log_ratio, sign * clipped)  # [N, T]
    seq_ratio = masked_mean(pessimistic, mask, dim=-1).exp()  # [N]
    losses = (-advantages * seq_ratio).unsqueeze(-1).expand_as(log_ratio)
    a = advantages.unsqueeze(-1)
    low, high = (a < 0) & (log_ratio < -clip_low), (a > 0) & (log_ratio > clip_high)  # where the min picks the clip
    geometric_ratio = masked_mean(log_ratio, mask, dim=-1).exp().unsqueeze(-1).expand_as(log_ratio)
    return TokenLosses(losses, low, high, geometric_ratio.detach())


def token_ratio(logprobs: torch.Tensor, old_logprobs: torch.Tensor) -> torch.Tensor:
    """[N, T] pi / pi_old per token, the log-ratio clamped to [-20, 20] (exp overflow on stale tokens, as verl)."""
    return (logprobs - old_logprobs).clamp(-20.0, 20.0).exp()


def unclipped(losses: torch.Tensor, ratio: torch.Tensor) -> TokenLosses:
    """`TokenLosses` of an objective that clips nothing (clip fractions 0; `ratio` logged)."""
    none = torch.zeros_like(losses, dtype=torch.bool)
    return TokenLosses(losses, none, none, ratio.detach())
