"""`algorithm=clip_cov`: PPO clip plus cutting the gradient of a few high-covariance tokens."""

from __future__ import annotations

from typing import Any

import torch

from clipo.algorithms.base import PolicyLossBase, check_clip
from clipo.algorithms.objectives import TokenLosses
from clipo.ops import masked_mean
from clipo.registry import ALGORITHMS


def clip_cov_token_losses(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                          mask: torch.Tensor, clip_low: float, clip_high: float, ratio_cut: float,
                          cov_low: float, cov_high: float) -> TokenLosses:
    """Clip-Cov ("The Entropy Mechanism of RL for Reasoning LMs", arXiv 2505.22617), as verl's `clip_cov`:
    the PPO-clip loss, with the gradient removed from `max(1, int(ratio_cut * tokens))` response tokens
    drawn at random (torch's global generator, as verl) among those the clip left alone whose centred
    covariance `(A - mean A) (log pi - mean log pi)` lies strictly inside (cov_low, cov_high); means are
    over the micro-batch's response tokens. `clipped_high` marks the cut tokens.

    Args:
        logprobs, old_logprobs, mask: [N, T]. advantages: [N].
    """
    a = advantages.unsqueeze(-1).expand_as(logprobs)  # [N, T]
    ratio = (logprobs - old_logprobs).exp()
    unclipped_loss = -a * ratio
    clipped_loss = -a * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    by_clip = (clipped_loss > unclipped_loss) & mask
    detached = logprobs.detach()
    cov = (a - masked_mean(a, mask)) * (detached - masked_mean(detached, mask))  # [N, T]
    candidates = torch.nonzero((cov < cov_high) & (cov > cov_low) & mask & ~by_clip)  # [K, 2]
    count = max(int(ratio_cut * int(mask.sum())), 1)
    cut = torch.zeros_like(mask)
    if len(candidates):  # (drawing only then keeps the global generator's stream as verl's)
        chosen = candidates[torch.randperm(len(candidates))[:count].to(candidates.device)]
        cut[chosen[:, 0], chosen[:, 1]] = True
    losses = torch.where(cut, 0.0, torch.maximum(unclipped_loss, clipped_loss))
    return TokenLosses(losses, torch.zeros_like(mask), cut, ratio.detach())


@ALGORITHMS.register("clip_cov")
class ClipCovLoss(PolicyLossBase):
    """`algorithm=clip_cov`: see `clip_cov_token_losses`; verl's defaults (clip 0.2, 2e-4 of the tokens,
    covariance bounds (1, 5)), token-mean aggregation."""

    def __init__(
        self,
        clip_low: float = 0.2,
        clip_high: float = 0.2,
        clip_cov_ratio: float = 2e-4,
        clip_cov_lb: float = 1.0,
        clip_cov_ub: float = 5.0,
        aggregation: str = "token-mean",
        **common: Any,
    ) -> None:
        super().__init__(aggregation, **common)  # the KL term, masks (`PolicyLossBase`)
        check_clip(type(self).__name__, clip_low=clip_low, clip_high=clip_high)
        if clip_cov_ratio <= 0:
            raise ValueError(f"ClipCovLoss: clip_cov_ratio must be > 0, got {clip_cov_ratio}")
        self.clip_low, self.clip_high = clip_low, clip_high
        self.clip_cov_ratio, self.clip_cov_lb, self.clip_cov_ub = clip_cov_ratio, clip_cov_lb, clip_cov_ub

    def token_losses(self, logprobs, old_logprobs, advantages, mask) -> TokenLosses:  # noqa: ANN001
        return clip_cov_token_losses(logprobs, old_logprobs, advantages, mask, self.clip_low, self.clip_high,
                                     self.clip_cov_ratio, self.clip_cov_lb, self.clip_cov_ub)
