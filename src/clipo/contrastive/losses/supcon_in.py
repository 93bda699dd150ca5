"""`loss=supcon_in`: supervised contrastive loss, positives averaged inside the log."""

from __future__ import annotations

import torch

from clipo.contrastive import functional as CF
from clipo.contrastive.losses.base import ContrastiveLoss
from clipo.contrastive.sets import ContrastiveSets
from clipo.registry import LOSSES


@LOSSES.register("supcon_in")
class SupConInLoss(ContrastiveLoss):
    """SupCon "in": the average over positives taken inside the log."""

    def compute(self, embeddings: torch.Tensor, sets: ContrastiveSets) -> tuple[torch.Tensor, torch.Tensor]:
        return CF.supcon_in_loss(embeddings, sets, self.temperature)
