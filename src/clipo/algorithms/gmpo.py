"""`algorithm=gmpo`: geometric-mean importance ratio."""

from __future__ import annotations

from typing import Any

from clipo.algorithms.base import PolicyLossBase, check_clip
from clipo.algorithms.objectives import TokenLosses, gmpo_token_losses
from clipo.registry import ALGORITHMS


@ALGORITHMS.register("gmpo")
class GMPOLoss(PolicyLossBase):
    """`algorithm=gmpo`: geometric-mean ratio (arXiv 2507.20673), see `gmpo_token_losses`.
    `clip_low`/`clip_high` are in log space (paper: (-0.4, 0.4)); seq-mean-token-mean by default."""

    def __init__(
        self,
        clip_low: float = 0.4,
        clip_high: float = 0.4,
        aggregation: str = "seq-mean-token-mean",
        **common: Any,
    ) -> None:
        super().__init__(aggregation, **common)  # the KL term, masks (`PolicyLossBase`)
        check_clip(type(self).__name__, clip_low=clip_low, clip_high=clip_high)
        self.clip_low, self.clip_high = clip_low, clip_high

    def token_losses(self, logprobs, old_logprobs, advantages, mask) -> TokenLosses:  # noqa: ANN001
        return gmpo_token_losses(logprobs, old_logprobs, advantages, mask, self.clip_low, self.clip_high)
