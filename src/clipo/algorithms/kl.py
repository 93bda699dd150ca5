"""KL estimators between the policy and the reference model (Schulman, "Approximating KL divergence").

Shapes: `N` rollouts, `T` response tokens.
"""

from __future__ import annotations

import torch

KL_ESTIMATORS = ("k1", "k2", "k3")


def token_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-token estimate [N, T] of KL(pi || pi_ref) on tokens sampled from pi.

    Schulman, "Approximating KL divergence", http://joschu.net/blog/kl-approx.html, with
    `log_ratio = logprobs - ref_logprobs`: `k1 = log_ratio` (unbiased), `k2 = log_ratio**2 / 2`,
    `k3 = exp(-log_ratio) + log_ratio - 1` (unbiased, >= 0). As verl's `low_var_kl`, k3 clamps
    `-log_ratio` to [-20, 20] before the exp and the result to [-10, 10].
    """
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    if estimator == "k3":
        neg = (-log_ratio).clamp(-20.0, 20.0)
        return (neg.exp() - neg - 1.0).clamp(-10.0, 10.0)
    raise ValueError(f"unknown KL estimator {estimator!r}; choose one of: {', '.join(KL_ESTIMATORS)}")
