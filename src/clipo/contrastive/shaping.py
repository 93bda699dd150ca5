"""Reward shaping and geometry statistics of CLIPO (DESIGN.md section 1, `mode: reward`).

Shapes: `N` rollouts, `D` feature size (hidden or embedding).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clipo.contrastive.sets import ContrastiveSets, labels_to_bool


def contrastive_reward(
    per_sample: torch.Tensor, labels: torch.Tensor, lam: float = 0.2, c: float = 0.0, floor: float = -0.5
) -> torch.Tensor:
    """Contrastive bonus added to each rollout's reward: the shaped reward is r_i + bonus_i.

    bonus_i = max(c - lam * L_i, floor) for correct rollouts (y_i = 1), 0 for wrong ones.
    A correct rollout that is not an anchor (L_i = 0) therefore gets max(c, floor).

    Args:
        per_sample: [N] contrastive losses L_i.
        labels: [N] verifier labels, bool or 0/1.
        lam: weight lambda of the loss in the bonus (paper: 0.2).
        c: bonus of a zero-loss rollout (paper: 0).
        floor: lowest bonus (paper: -0.5), so one bad embedding cannot swamp the reward.

    Returns:
        [N] float32 bonus (it carries `per_sample`'s graph; detach it for use as a reward).
    """
    bonus = (c - lam * per_sample.float()).clamp(min=floor)
    return torch.where(labels_to_bool(labels), bonus, torch.zeros_like(bonus))


def similarity_stats(features: torch.Tensor, sets: ContrastiveSets) -> dict[str, torch.Tensor]:
    """Mean cosine similarity over anchors' positive pairs and over their negative pairs.

    Pairs are (i, j) with i an anchor and j in P(i) (resp. N(i)); each ordered pair counts once.
    Computed in float32, without gradient. With no pair of a kind, its mean is 0.0 (not NaN);
    the pair counts are returned too, so a logged 0 can be told apart from "no pairs".

    Args:
        features: [N, D] vectors (pooled hidden states or embeddings), any float dtype.
        sets: the batch's sets.

    Returns:
        {"pos_cos": [], "neg_cos": [], "pos_pairs": [], "neg_pairs": []}, float32, detached.
    """
    unit = F.normalize(features.detach().float(), dim=-1)
    cos = unit @ unit.T  # [N, N]
    anchor_rows = sets.anchors[:, None]
    stats = {}
    for kind, pairs in (("pos", sets.positives & anchor_rows), ("neg", sets.negatives & anchor_rows)):
        count = pairs.sum().float()
        stats[f"{kind}_cos"] = (cos * pairs.float()).sum() / count.clamp(min=1)
        stats[f"{kind}_pairs"] = count
    return stats

