"""`algorithm=gspo`: sequence-level importance ratio."""

from __future__ import annotations

from typing import Any

import torch

from clipo.algorithms.base import PolicyLossBase, check_clip
from clipo.algorithms.inputs import LossInputs
from clipo.algorithms.objectives import TokenLosses, gspo_token_losses
from clipo.ops import masked_mean
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
        **common: Any,
    ) -> None:
        super().__init__(aggregation, **common)  # the KL term, masks (`PolicyLossBase`)
        check_clip(type(self).__name__, clip_low=clip_low, clip_high=clip_high)
        self.clip_low, self.clip_high = clip_low, clip_high

    def token_losses(self, logprobs, old_logprobs, advantages, mask) -> TokenLosses:  # noqa: ANN001
        return gspo_token_losses(logprobs, old_logprobs, advantages, mask, self.clip_low, self.clip_high)

    def kl_ratio(self, inputs: LossInputs) -> torch.Tensor:
        """[N, 1] the sequence ratio exp(mean_t log(pi / pi_old)) with its gradient (TRL's sequence-level weight)."""
        seq_log_ratio = masked_mean(inputs.logprobs - inputs.old_logprobs, inputs.mask, dim=-1)  # [N]
        return seq_log_ratio.clamp(max=10.0).exp().unsqueeze(-1)
