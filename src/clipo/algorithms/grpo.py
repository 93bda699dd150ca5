"""`algorithm=grpo`: the PPO-clip objective of GRPO."""

from __future__ import annotations

from typing import Any

from clipo.algorithms.base import PolicyLossBase, check_clip
from clipo.algorithms.objectives import TokenLosses, ppo_token_losses
from clipo.registry import ALGORITHMS


@ALGORITHMS.register("grpo")
class GRPOLoss(PolicyLossBase):
    """`algorithm=grpo`: token-level PPO clip (arXiv 1707.06347) as in GRPO (DeepSeekMath, arXiv
    2402.03300), with dual clip (arXiv 1912.09729) for negative advantages; `clip_c=None` disables it.
    Token-mean aggregation by default (verl's default and the CLIPO paper's setting)."""

    def __init__(
        self,
        clip_low: float = 0.2,
        clip_high: float = 0.2,
        clip_c: float | None = 3.0,
        aggregation: str = "token-mean",
        **common: Any,
    ) -> None:
        super().__init__(aggregation, **common)  # the KL term, masks (`PolicyLossBase`)
        check_clip(type(self).__name__, clip_low=clip_low, clip_high=clip_high)
        self.clip_low, self.clip_high = clip_low, clip_high
        if clip_c is not None and clip_c <= 1.0 + clip_high:
            raise ValueError(f"clip_c must exceed 1 + clip_high = {1 + clip_high} (None disables it), got {clip_c}")
        self.clip_c = clip_c

    def token_losses(self, logprobs, old_logprobs, advantages, mask) -> TokenLosses:  # noqa: ANN001
        return ppo_token_losses(logprobs, old_logprobs, advantages, self.clip_low, self.clip_high, self.clip_c)
