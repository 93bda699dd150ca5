"""The base of the contrastive losses (the `loss=` config group, one file per option); the math is in
`clipo.contrastive.functional`.

Shapes: `N` rollouts, `E` embedding size. Every loss is called as

    per_sample, batch_loss = loss(embeddings[N, E], labels[N], groups[N])

with unit embeddings from the head; both outputs are float32 ([N] and []).
"""

from __future__ import annotations

import torch
from torch import nn

from clipo.contrastive.sets import (
    ANCHOR_MODES,
    LEVELS,
    ContrastiveSets,
    build_sets,
    check_choice,
    labels_to_bool,
)
from clipo.distributed import all_gather_rows, globally_unique_groups, world


class ContrastiveLoss(nn.Module):
    """Hyperparameters shared by every contrastive loss; subclasses implement `compute`.

    Args:
        temperature: tau in s_ij = z_i . z_j / tau (unused by `triplet`).
        level: "group" (the paper's), "cross" or "batch": which rollouts are candidates/positives.
        anchors: "correct" (y_i = 1, the paper's) or "all".
        skip_trivial: an anchor also needs |P(i)| > 0 and |N(i)| > 0.
        seed: seed of the loss's own random stream (only `infonce` draws).
    """

    enabled = True

    def __init__(
        self,
        temperature: float = 0.05,
        level: str = "group",
        anchors: str = "correct",
        skip_trivial: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        check_choice("level", level, LEVELS)
        check_choice("anchors", anchors, ANCHOR_MODES)
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.level = level
        self.anchors = anchors
        self.skip_trivial = bool(skip_trivial)
        self.seed = int(seed)

    def sets(self, labels: torch.Tensor, groups: torch.Tensor) -> ContrastiveSets:
        """The batch's A(i), P(i), N(i) and anchors under this loss's settings."""
        return build_sets(labels, groups, self.level, self.anchors, self.skip_trivial)

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if embeddings.dim() != 2 or embeddings.shape[0] != labels.shape[0]:
            raise ValueError(
                f"embeddings must be [N, E] with N = len(labels) = {labels.shape[0]}, got {tuple(embeddings.shape)}"
            )
        if self.level == "group" or world()[1] == 1:
            return self.compute(embeddings, self.sets(labels, groups))
        return self._compute_across_ranks(embeddings, labels, groups)

    def _compute_across_ranks(
        self, embeddings: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`cross`/`batch` levels under data parallelism: the candidates are every rank's rollouts.

        This rank's anchors are scored against all gathered embeddings (gradient on the local rows
        only); the per-sample losses equal those of one process holding the global batch.
        Returns this rank's rows of L_i and the mean over this rank's anchors.
        """
        all_embeddings, local = all_gather_rows(embeddings)
        keys = torch.stack([globally_unique_groups(groups), labels_to_bool(labels).long()], dim=1)
        all_keys = all_gather_rows(keys)[0]
        sets = self.sets(all_keys[:, 1], all_keys[:, 0])
        is_local = torch.zeros_like(sets.anchors)
        is_local[local] = True
        per_sample, batch_loss = self.compute(all_embeddings, sets._replace(anchors=sets.anchors & is_local))
        return per_sample[local], batch_loss

    def compute(self, embeddings: torch.Tensor, sets: ContrastiveSets) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, level={self.level}, anchors={self.anchors}, "
            f"skip_trivial={self.skip_trivial}"
        )
