"""`loss=infonce`: InfoNCE with one drawn positive per anchor (the paper's)."""

from __future__ import annotations

import torch

from clipo.contrastive import functional as CF
from clipo.contrastive.losses.base import ContrastiveLoss
from clipo.contrastive.sets import ContrastiveSets, sample_positives
from clipo.registry import LOSSES


@LOSSES.register("infonce")
class InfoNCELoss(ContrastiveLoss):
    """InfoNCE with one positive drawn uniformly from P(i) per anchor (the paper's default).

    The draw uses a CPU torch.Generator seeded with `seed`; its state is saved in `state_dict()`
    (as module extra state), so a resumed run draws the same positives.
    """

    def __init__(
        self,
        temperature: float = 0.05,
        level: str = "group",
        anchors: str = "correct",
        skip_trivial: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__(temperature, level, anchors, skip_trivial, seed)
        self.generator = torch.Generator().manual_seed(self.seed)

    def compute(self, embeddings: torch.Tensor, sets: ContrastiveSets) -> tuple[torch.Tensor, torch.Tensor]:
        positive_index = sample_positives(sets.positives, self.generator)
        return CF.infonce_loss(embeddings, sets, positive_index, self.temperature)

    def get_extra_state(self) -> dict:
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
