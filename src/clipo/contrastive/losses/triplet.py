"""`loss=triplet`: triplet margin loss on unit embeddings."""

from __future__ import annotations

import torch

from clipo.contrastive import functional as CF
from clipo.contrastive.losses.base import ContrastiveLoss
from clipo.contrastive.sets import ContrastiveSets
from clipo.registry import LOSSES


@LOSSES.register("triplet")
class TripletLoss(ContrastiveLoss):
    """Triplet margin loss on Euclidean distances between unit embeddings, all (p, n) pairs.

    Args:
        margin: the hinge margin (distances lie in [0, 2]).
        The other arguments are `ContrastiveLoss`'s; a triplet loss has no temperature.
    """

    def __init__(
        self,
        level: str = "group",
        anchors: str = "correct",
        skip_trivial: bool = True,
        seed: int = 0,
        margin: float = 0.2,
    ) -> None:
        super().__init__(1.0, level, anchors, skip_trivial, seed)  # distances, not similarities: no temperature
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        self.margin = float(margin)

    def compute(self, embeddings: torch.Tensor, sets: ContrastiveSets) -> tuple[torch.Tensor, torch.Tensor]:
        return CF.triplet_loss(embeddings, sets, self.margin)
