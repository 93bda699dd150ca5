"""`algorithm=dro`: the policy gradient with a quadratic log-ratio penalty (Direct Reward Optimisation)."""

from __future__ import annotations

from typing import Any

from clipo.algorithms.base import PolicyLossBase
from clipo.algorithms.objectives import TokenLosses, token_ratio, unclipped
from clipo.registry import ALGORITHMS


@ALGORITHMS.register("dro")
class DROLoss(PolicyLossBase):
    """`algorithm=dro`: DRO (Richemond et al., arXiv 2405.19107; Kimi k1.5, arXiv 2501.12599):
    `-(A * log pi - beta / 2 * (log pi - log pi_old)^2)` per token, as verl's `dro`; the square keeps
    the update near the sampling policy instead of a clip. `beta` 0.05 (Tinker's example; verl has no
    default and requires one); token-mean aggregation."""

    def __init__(
        self,
        beta: float = 0.05,
        aggregation: str = "token-mean",
        **common: Any,
    ) -> None:
        super().__init__(aggregation, **common)  # the KL term, masks (`PolicyLossBase`)
        if beta <= 0:
            raise ValueError(f"DROLoss: beta must be > 0 (the penalty's weight), got {beta}")
        self.beta = beta

    def token_losses(self, logprobs, old_logprobs, advantages, mask) -> TokenLosses:  # noqa: ANN001
        log_ratio = logprobs - old_logprobs
        losses = -(logprobs * advantages.unsqueeze(-1) - 0.5 * self.beta * log_ratio.square())
        return unclipped(losses, token_ratio(logprobs, old_logprobs))
