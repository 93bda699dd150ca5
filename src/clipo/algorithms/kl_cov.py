"""`algorithm=kl_cov`: the unclipped surrogate plus a |log-ratio| penalty on the highest-covariance tokens."""

from __future__ import annotations

from typing import Any

import torch

from clipo.algorithms.base import PolicyLossBase
from clipo.algorithms.objectives import TokenLosses
from clipo.registry import ALGORITHMS


def kl_cov_token_losses(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                        mask: torch.Tensor, ratio_top: float, coef: float) -> TokenLosses:
    """KL-Cov (arXiv 2505.22617), as verl's `kl_cov`: `-A r` on every token (no clip), and on the
    `max(1, int(ratio_top * tokens))` response tokens of largest centred covariance
    `(A - mean A) (log pi - mean log pi)` (means over the micro-batch's response tokens) the penalty
    `coef * |log r|` is added. `clipped_high` marks the penalised tokens.

    Args:
        logprobs, old_logprobs, mask: [N, T]. advantages: [N].
    """
    a = advantages.unsqueeze(-1).expand_as(logprobs)  # [N, T]
    log_ratio = logprobs - old_logprobs
    ratio = log_ratio.exp()
    flat = torch.nonzero(mask.reshape(-1), as_tuple=True)[0]  # response positions, row-major
    chosen = torch.zeros_like(mask)
    if len(flat):
        adv, logp = a.detach().reshape(-1)[flat], logprobs.detach().reshape(-1)[flat]
        cov = (adv - adv.mean()) * (logp - logp.mean())
        top = flat[torch.topk(cov, max(1, int(len(cov) * ratio_top))).indices]
        chosen.view(-1)[top] = True
    losses = -a * ratio + torch.where(chosen, coef * log_ratio.abs(), 0.0)
    return TokenLosses(losses, torch.zeros_like(mask), chosen, ratio.detach())


@ALGORITHMS.register("kl_cov")
class KLCovLoss(PolicyLossBase):
    """`algorithm=kl_cov`: see `kl_cov_token_losses`; verl's defaults (2e-4 of the tokens, coefficient
    0.1), token-mean aggregation."""

    def __init__(
        self,
        kl_cov_ratio: float = 2e-4,
        ppo_kl_coef: float = 0.1,
        aggregation: str = "token-mean",
        **common: Any,
    ) -> None:
        super().__init__(aggregation, **common)  # the KL term, masks (`PolicyLossBase`)
        if kl_cov_ratio <= 0:
            raise ValueError(f"KLCovLoss: kl_cov_ratio must be > 0, got {kl_cov_ratio}")
        self.kl_cov_ratio, self.ppo_kl_coef = kl_cov_ratio, ppo_kl_coef

    def token_losses(self, logprobs, old_logprobs, advantages, mask) -> TokenLosses:  # noqa: ANN001
        return kl_cov_token_losses(logprobs, old_logprobs, advantages, mask, self.kl_cov_ratio, self.ppo_kl_coef)
