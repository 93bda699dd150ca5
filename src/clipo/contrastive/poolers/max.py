"""`pooler=max`: element-wise max over response tokens."""

from __future__ import annotations

import torch

from clipo.contrastive.poolers.base import Pooler
from clipo.registry import POOLERS


@POOLERS.register("max")
class MaxPooler(Pooler):
    """Element-wise max over response tokens."""

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        lowest = torch.finfo(hidden.dtype).min  # finite, so an empty row never makes inf/NaN
        pooled = hidden.masked_fill(~mask[..., None], lowest).amax(dim=1)
        return torch.where(mask.any(dim=1, keepdim=True), pooled, torch.zeros_like(pooled))
