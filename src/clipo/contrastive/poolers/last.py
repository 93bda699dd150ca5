"""`pooler=last`: the last response token's state."""

from __future__ import annotations

import torch

from clipo.contrastive.poolers.base import Pooler
from clipo.registry import POOLERS


@POOLERS.register("last")
class LastTokenPooler(Pooler):
    """The hidden state at the last True position of each row."""

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(mask.shape[1], device=mask.device)  # [T]
        last = (positions * mask).argmax(dim=1)  # [N]; 0 on an empty row, zeroed below
        picked = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # [N, D]
        return picked * mask.any(dim=1, keepdim=True).float()
