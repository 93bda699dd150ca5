"""`algorithm=gpg`: the plain policy gradient, no ratio and no clip (Group Policy Gradient)."""

from __future__ import annotations

from typing import Any

from clipo.algorithms.base import PolicyLossBase
from clipo.algorithms.objectives import TokenLosses, token_ratio, unclipped
from clipo.registry import ALGORITHMS


@ALGORITHMS.register("gpg")
class GPGLoss(PolicyLossBase):
    """`algorithm=gpg`: GPG (arXiv 2504.02546): the REINFORCE loss `-A * log pi` on every response
    token, as verl's `gpg` (pair it with `advantage=gpg`, the paper's estimator). With several updates
    per batch nothing corrects for pi_old (no ratio); token-mean aggregation."""

    def __init__(
        self,
        aggregation: str = "token-mean",
        **common: Any,
    ) -> None:
        super().__init__(aggregation, **common)  # the KL term, masks (`PolicyLossBase`)

    def token_losses(self, logprobs, old_logprobs, advantages, mask) -> TokenLosses:  # noqa: ANN001
        return unclipped(-advantages.unsqueeze(-1) * logprobs, token_ratio(logprobs, old_logprobs))
