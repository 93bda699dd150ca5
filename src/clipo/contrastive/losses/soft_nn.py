"""`loss=soft_nn`: soft nearest-neighbour loss."""

from __future__ import annotations

import torch

from clipo.contrastive import functional as CF
from clipo.contrastive.losses.base import ContrastiveLoss
from clipo.contrastive.sets import ContrastiveSets
from clipo.registry import LOSSES


@LOSSES.register("soft_nn")
class SoftNearestNeighborLoss(ContrastiveLoss):
    """Soft nearest-neighbour loss: -log of the total probability mass on positives."""

    def compute(self, embeddings: torch.Tensor, sets: ContrastiveSets) -> tuple[torch.Tensor, torch.Tensor]:
        return CF.soft_nn_loss(embeddings, sets, self.temperature)
