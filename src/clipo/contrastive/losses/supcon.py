"""`loss=supcon`: supervised contrastive loss, positives averaged outside the log."""

from __future__ import annotations

import torch

from clipo.contrastive import functional as CF
from clipo.contrastive.losses.base import ContrastiveLoss
from clipo.contrastive.sets import ContrastiveSets
from clipo.registry import LOSSES


@LOSSES.register("supcon")
class SupConLoss(ContrastiveLoss):
    """SupCon "out": the average over positives taken outside the log."""

    def compute(self, embeddings: torch.Tensor, sets: ContrastiveSets) -> tuple[torch.Tensor, torch.Tensor]:
        return CF.supcon_loss(embeddings, sets, self.temperature)
