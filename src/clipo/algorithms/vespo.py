"""`algorithm=vespo`: a smooth Gamma-shaped weight of the sequence importance ratio."""

from __future__ import annotations

import math
from typing import Any

import torch

from clipo.algorithms.base import PolicyLossBase
from clipo.algorithms.objectives import TokenLosses, token_ratio, unclipped
from clipo.registry import ALGORITHMS

LOG_MIN_WEIGHT = math.log(1e-8)  # the authors' floor of w


@torch.no_grad()
def gamma_weights(advantages: torch.Tensor, log_ratio: torch.Tensor, mask: torch.Tensor, k_pos: float,
                  lambda_pos: float, k_neg: float, lambda_neg: float) -> torch.Tensor:
    """[N, 1] `phi(w) = exp(lambda + k log w - lambda w)` (phi(1) = 1) of the sequence ratio
    `w = exp(sum_t log r_t)`, with (k, lambda) by the advantage's sign (A >= 0: the `_pos` pair).
    Token log-ratios are clamped to [-20, 20] and log w to [log 1e-8, 20]; a non-finite phi is 0.
    No gradient: phi only scales the REINFORCE term."""
    seq = torch.where(mask, log_ratio.clamp(-20.0, 20.0), 0.0).sum(-1, keepdim=True)  # [N, 1]
    log_w = seq.clamp(LOG_MIN_WEIGHT, 20.0)
    nonneg = advantages.unsqueeze(-1) >= 0
    k = torch.where(nonneg, k_pos, k_neg)
    lam = torch.where(nonneg, lambda_pos, lambda_neg).clamp(min=1e-4)
    return torch.exp(lam + k * log_w - lam * log_w.exp()).nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)


def vespo_token_losses(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                       mask: torch.Tensor, k_pos: float, lambda_pos: float, k_neg: float,
                       lambda_neg: float) -> TokenLosses:
    """VESPO (arXiv 2602.10693): `-phi(w) * A * log pi` per token, `phi` from `gamma_weights`; as TRL's
    `loss_type="vespo"`. Args: logprobs, old_logprobs, mask [N, T]; advantages [N]."""
    phi = gamma_weights(advantages, logprobs - old_logprobs, mask, k_pos, lambda_pos, k_neg, lambda_neg)
    losses = -phi * advantages.unsqueeze(-1) * logprobs
    return unclipped(losses, token_ratio(logprobs, old_logprobs))


@ALGORITHMS.register("vespo")
class VESPOLoss(PolicyLossBase):
    """`algorithm=vespo`: see `vespo_token_losses`; TRL's defaults (k, lambda) = (2, 3) for A >= 0 and
    (3, 2) below, token-mean aggregation (TRL's for vespo). The sampler correction multiplies the
    per-token loss as for every algorithm here; TRL folds its ratio into w instead."""

    def __init__(
        self,
        k_pos: float = 2.0,
        lambda_pos: float = 3.0,
        k_neg: float = 3.0,
        lambda_neg: float = 2.0,
        aggregation: str = "token-mean",
        **common: Any,
    ) -> None:
        super().__init__(aggregation, **common)  # the KL term, masks (`PolicyLossBase`)
        self.k_pos, self.lambda_pos, self.k_neg, self.lambda_neg = k_pos, lambda_pos, k_neg, lambda_neg

    def token_losses(self, logprobs, old_logprobs, advantages, mask) -> TokenLosses:  # noqa: ANN001
        return vespo_token_losses(logprobs, old_logprobs, advantages, mask, self.k_pos, self.lambda_pos,
                                  self.k_neg, self.lambda_neg)
