"""`algorithm=sapo`: a smooth, temperature-controlled gate instead of the hard clip."""

from __future__ import annotations

from typing import Any

import torch

from clipo.algorithms.base import PolicyLossBase
from clipo.algorithms.objectives import TokenLosses, token_ratio, unclipped
from clipo.registry import ALGORITHMS


def sapo_token_losses(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                      tau_pos: float, tau_neg: float) -> TokenLosses:
    """SAPO (arXiv 2511.20347): `-f(r) * A` with the gate `f(r) = sigmoid(tau (r - 1)) * 4 / tau`,
    `tau = tau_pos` where A > 0 and `tau_neg` elsewhere; `f'(1) = 1`, so on-policy it is the plain
    policy gradient, and far from r = 1 the gradient fades instead of being cut. As verl's `sapo`
    and TRL's `loss_type="sapo"`.

    Args:
        logprobs, old_logprobs: [N, T]. advantages: [N].
    """
    ratio = token_ratio(logprobs, old_logprobs)
    a = advantages.unsqueeze(-1)  # [N, 1]
    tau = torch.where(a > 0, tau_pos, tau_neg)
    gate = torch.sigmoid(tau * (ratio - 1.0)) * (4.0 / tau)
    return unclipped(-gate * a, ratio)


@ALGORITHMS.register("sapo")
class SAPOLoss(PolicyLossBase):
    """`algorithm=sapo`: see `sapo_token_losses`; the paper's temperatures 1.0 / 1.05 and
    seq-mean-token-mean aggregation (verl's, which it imposes; TRL's `sapo` aggregates so too)."""

    def __init__(
        self,
        tau_pos: float = 1.0,
        tau_neg: float = 1.05,
        aggregation: str = "seq-mean-token-mean",
        **common: Any,
    ) -> None:
        super().__init__(aggregation, **common)  # the KL term, masks (`PolicyLossBase`)
        if tau_pos <= 0 or tau_neg <= 0:
            raise ValueError(f"SAPOLoss: tau_pos and tau_neg must be > 0, got {tau_pos}, {tau_neg}")
        self.tau_pos, self.tau_neg = tau_pos, tau_neg

    def token_losses(self, logprobs, old_logprobs, advantages, mask) -> TokenLosses:  # noqa: ANN001
        return sapo_token_losses(logprobs, old_logprobs, advantages, self.tau_pos, self.tau_neg)
