"""CLIPO's contrastive objective: pooler -> head -> loss, per rollout and over the batch, with metrics.

Shapes: `N` rollouts, `T` response tokens, `D` hidden size. DESIGN.md section 1, arXiv 2603.10101.

The objective knows nothing of how its loss is used. The two modes are adapters in
`clipo.contrastive.modes`, one of which the builders choose once:

    ContrastiveRewardShaping   (reward mode, the paper's) detaches the hidden states, trains the head
                               on the batch loss and adds max(c - lam * L_i, floor) to correct rewards
    ContrastiveLossTerm        (loss mode) adds coef * batch loss to the policy loss

`loss=none` (plain RLVR) builds no objective at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from clipo.contrastive.losses import ContrastiveLoss
from clipo.contrastive.sets import labels_to_bool
from clipo.contrastive.shaping import similarity_stats


@dataclass
class ContrastiveOutput:
    """What one contrastive pass returns; all float32."""

    per_sample: torch.Tensor  # [N] L_i, with graph to head and pooler (and to the policy if `hidden` has one)
    batch_loss: torch.Tensor  # [] mean over anchors, with the same graph
    anchors: torch.Tensor  # [] how many rollouts are anchors (float32)
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)  # detached scalars


class ContrastiveObjective(nn.Module):
    """Ties pooler, head and loss together.

    Args:
        pooler: a POOLERS module (attention has parameters).
        head: a HEADS module.
        loss: a LOSSES module other than `none`.
    """

    def __init__(self, pooler: nn.Module, head: nn.Module, loss: ContrastiveLoss) -> None:
        super().__init__()
        if not loss.enabled:
            raise ValueError("loss=none is plain RLVR: it has no contrastive objective to build")
        if head is None:
            raise ValueError("a contrastive loss needs a head; build one with HEADS.build(...) or use loss=none")
        self.pooler, self.head, self.loss = pooler, head, loss

    def forward(
        self, hidden: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor
    ) -> ContrastiveOutput:
        """Per-rollout and batch losses, and metrics.

        Args:
            hidden: [N, T, D] response-token hidden states of the captured layer (`rollout.hidden_layer`).
            mask: [N, T] True on the rows to pool (`RolloutBatch.hidden_mask`: response tokens 0..L-2).
            labels: [N] verifier labels, bool or 0/1.
            groups: [N] prompt ids.
        """
        labels = labels_to_bool(labels)  # checked once; bool labels skip the later checks
        pooled = self.pooler(hidden, mask)  # [N, D] float32
        embeddings = self.head(pooled)  # [N, E] unit
        per_sample, batch_loss = self.loss(embeddings, labels, groups)
        sets = self.loss.sets(labels, groups)
        anchors = sets.anchors.float().sum()
        return ContrastiveOutput(per_sample, batch_loss, anchors, self._metrics(pooled, embeddings, sets, batch_loss))

    def _metrics(self, pooled, embeddings, sets, batch_loss) -> dict[str, torch.Tensor]:
        hidden_stats = similarity_stats(pooled, sets)
        embed_stats = similarity_stats(embeddings, sets)
        return {
            "contrastive/loss": batch_loss.detach(),
            "contrastive/anchor_frac": sets.anchors.float().sum() / max(sets.anchors.numel(), 1),
            "contrastive/pos_cos_hidden": hidden_stats["pos_cos"],
            "contrastive/neg_cos_hidden": hidden_stats["neg_cos"],
            "contrastive/pos_cos_embed": embed_stats["pos_cos"],
            "contrastive/neg_cos_embed": embed_stats["neg_cos"],
            # the cosines read 0 when there are no pairs; the counts tell that apart
            "contrastive/pos_pairs": embed_stats["pos_pairs"],
            "contrastive/neg_pairs": embed_stats["neg_pairs"],
        }
