"""`pooler=attention`: softmax attention with one learned query."""

from __future__ import annotations

import torch
from torch import nn

from clipo.contrastive.poolers.base import Pooler
from clipo.registry import POOLERS


@POOLERS.register("attention")
class AttentionPooler(Pooler):
    """Softmax attention over response tokens with one learned query q [D].

    weights_t = softmax_t(h_t . q / sqrt(D)) over valid tokens; pooled = sum_t weights_t h_t.
    q starts at zero, so the pooler starts as mean pooling and learns from there.
    """

    def __init__(self, hidden_size: int) -> None:
        super().__init__(hidden_size)
        self.query = nn.Parameter(torch.zeros(hidden_size))

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = hidden @ self.query.float() / self.hidden_size**0.5  # [N, T]
        has_any = mask.any(dim=1, keepdim=True)  # [N, 1]
        # Empty rows attend uniformly to zeros instead of softmax over all -inf (NaN).
        scores = scores.masked_fill(~mask, float("-inf")).masked_fill(~has_any, 0.0)
        weights = torch.softmax(scores, dim=1) * has_any.float()  # [N, T]
        return torch.einsum("nt,ntd->nd", weights, hidden)
