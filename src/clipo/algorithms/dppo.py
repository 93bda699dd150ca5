"""The two DPPO objectives (`dppo_tv.py`, `dppo_kl.py`): a trust region on the sampled token's probability."""

from __future__ import annotations

from typing import Any

import torch

from clipo.algorithms.base import PolicyLossBase, check_clip
from clipo.algorithms.objectives import TokenLosses


def dppo_token_losses(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                      valid: torch.Tensor, clip_c: float) -> TokenLosses:
    """DPPO (arXiv 2602.04879), as verl's `dppo_tv` / `dppo_kl`: `-A * sg(min(r, clip_c)) * log pi * valid`,
    the ratio truncated (TIS) instead of clipped, `valid` [N, T] the tokens inside the divergence's trust
    region (no gradient elsewhere). `clipped_high` marks the tokens outside it."""
    ratio = (logprobs - old_logprobs).clamp(-20.0, 20.0).exp()
    weight = ratio.clamp(max=clip_c).detach()
    losses = -advantages.unsqueeze(-1) * weight * logprobs * valid.float()
    return TokenLosses(losses, torch.zeros_like(valid), ~valid, ratio.detach())


class DPPOLossBase(PolicyLossBase):
    """DPPO's settings: `clip_low` / `clip_high` bound the divergence (not the ratio) for A <= 0 / A > 0,
    `clip_c` truncates the importance weight (verl's default 20). Subclasses give `valid_tokens`."""

    def __init__(
        self,
        clip_low: float = 0.2,
        clip_high: float = 0.2,
        clip_c: float = 20.0,
        aggregation: str = "token-mean",
        **common: Any,
    ) -> None:
        super().__init__(aggregation, **common)  # the KL term, masks (`PolicyLossBase`)
        check_clip(type(self).__name__, clip_low=clip_low, clip_high=clip_high)
        if clip_c <= 0:
            raise ValueError(f"{type(self).__name__}: clip_c (the weight's truncation) must be > 0, got {clip_c}")
        self.clip_low, self.clip_high, self.clip_c = clip_low, clip_high, clip_c

    def valid_tokens(self, logprobs: torch.Tensor, old_logprobs: torch.Tensor,
                     advantages: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def token_losses(self, logprobs, old_logprobs, advantages, mask) -> TokenLosses:  # noqa: ANN001
        valid = self.valid_tokens(logprobs.detach(), old_logprobs, advantages.unsqueeze(-1))
        return dppo_token_losses(logprobs, old_logprobs, advantages, valid, self.clip_c)
