"""`pooler=mean`: mean over response tokens (the paper's)."""

from __future__ import annotations

import torch

from clipo.contrastive.poolers.base import Pooler
from clipo.ops import masked_mean
from clipo.registry import POOLERS


@POOLERS.register("mean")
class MeanPooler(Pooler):
    """Mean over response tokens (the paper's)."""

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return masked_mean(hidden, mask[..., None], dim=1)
