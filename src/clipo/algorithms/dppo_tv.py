"""`algorithm=dppo_tv`: DPPO with the total-variation trust region."""

from __future__ import annotations

import torch

from clipo.algorithms.dppo import DPPOLossBase
from clipo.registry import ALGORITHMS


@ALGORITHMS.register("dppo_tv")
class DPPOTVLoss(DPPOLossBase):
    """`algorithm=dppo_tv`: DPPO-Binary-TV (arXiv 2602.04879), verl's `dppo_tv`: a token keeps its gradient
    while `p - p_old <= clip_high` (A > 0) or `p - p_old >= -clip_low` (A <= 0), p the sampled token's
    probability; see `dppo_token_losses`."""

    def valid_tokens(self, logprobs: torch.Tensor, old_logprobs: torch.Tensor,
                     advantages: torch.Tensor) -> torch.Tensor:
        change = logprobs.exp() - old_logprobs.exp()  # [N, T]
        return torch.where(advantages > 0, change <= self.clip_high, change >= -self.clip_low)
