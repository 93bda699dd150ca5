"""`loss=none`: plain RLVR, no contrastive term."""

from __future__ import annotations

import torch

from clipo.contrastive.losses.base import ContrastiveLoss
from clipo.registry import LOSSES


@LOSSES.register("none")
class NoContrastiveLoss(ContrastiveLoss):
    """Plain RLVR (the baseline): no contrastive term. Calling it returns zeros."""

    enabled = False

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        per_sample = torch.zeros(labels.shape[0], dtype=torch.float32, device=labels.device)
        return per_sample, per_sample.sum()
