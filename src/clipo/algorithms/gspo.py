"""`algorithm=gspo`: sequence-level importance ratio."""

from __future__ import annotations

from clipo.algorithms.base import PolicyLossBase
from clipo.algorithms.objectives import TokenLosses, gspo_token_losses
from clipo.registry import ALGORITHMS


@ALGORITHMS.register("gspo")
class GSPOLoss(PolicyLossBase):
    """`algorithm=gspo`: sequence-level ratio (arXiv 2507.18071), see `gspo_token_losses`.
    Defaults are the paper's clip ranges 3e-4 / 4e-4 and seq-mean-token-mean aggregation."""

    def __init__(
        self,
        clip_low: float = 3e-4,
        clip_high: float = 4e-4,
        aggregation: str = "seq-mean-token-mean",
        kl_coef: float = 0.0,
        kl_estimator: str = "k3",
    ) -> None:
        super().__init__(clip_low, clip_high, aggregation, kl_coef, kl_estimator)

    def token_losses(self, logprobs, old_logprobs, advantages, mask) -> TokenLosses:  # noqa: ANN001
        return gspo_token_losses(logprobs, old_logprobs, advantages, mask, self.clip_low, self.clip_high)
