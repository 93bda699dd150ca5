"""`algorithm=cispo`: clipped importance-sampling weights on the REINFORCE term (MiniMax-M1)."""

from __future__ import annotations

from typing import Any

import torch

from clipo.algorithms.base import PolicyLossBase, check_clip
from clipo.algorithms.objectives import TokenLosses, token_ratio
from clipo.registry import ALGORITHMS


def cispo_token_losses(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                       clip_low: float, clip_high: float) -> TokenLosses:
    """CISPO, MiniMax-M1 (arXiv 2506.13585, Eq. 4): `-sg(clip(r, 1 - clip_low, 1 + clip_high)) * A * log pi`.

    Unlike PPO, the clip bounds the weight and never removes a token's gradient. As verl's `cispo`;
    TRL's `loss_type="cispo"` bounds the ratio from above only, at `epsilon_high` (= 1 + clip_high,
    with clip_low >= 1 so the lower bound is inactive). Clip fractions count the tokens whose weight
    the bound changed (below: `clipped_low`, above: `clipped_high`), whatever the advantage's sign.

    Args:
        logprobs, old_logprobs: [N, T]. advantages: [N].
    """
    ratio = token_ratio(logprobs, old_logprobs)
    weight = ratio.clamp(1.0 - clip_low, 1.0 + clip_high).detach()
    losses = -weight * advantages.unsqueeze(-1) * logprobs
    return TokenLosses(losses, ratio < 1.0 - clip_low, ratio > 1.0 + clip_high, ratio.detach())


@ALGORITHMS.register("cispo")
class CISPOLoss(PolicyLossBase):
    """`algorithm=cispo`: see `cispo_token_losses`; defaults are TRL's recommended upper bound 5.0
    (clip_high 4.0) with no lower bound (clip_low 1.0), token-mean aggregation."""

    def __init__(
        self,
        clip_low: float = 1.0,
        clip_high: float = 4.0,
        aggregation: str = "token-mean",
        **common: Any,
    ) -> None:
        super().__init__(aggregation, **common)  # the KL term, masks (`PolicyLossBase`)
        check_clip(type(self).__name__, clip_low=clip_low, clip_high=clip_high)
        self.clip_low, self.clip_high = clip_low, clip_high

    def token_losses(self, logprobs, old_logprobs, advantages, mask) -> TokenLosses:  # noqa: ANN001
        return cispo_token_losses(logprobs, old_logprobs, advantages, self.clip_low, self.clip_high)
