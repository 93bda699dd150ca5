"""CLIPO's contrastive component: sets, losses, heads, poolers, reward shaping, objective.

Every option module is imported here so that its registration (LOSSES, HEADS, POOLERS)
never depends on what else was imported first.
"""

from clipo.contrastive import functional, heads, losses, poolers  # noqa: F401  (registration)
from clipo.contrastive.heads import FixedRandomHead, LinearHead, MLPHead
from clipo.contrastive.losses import (
    ContrastiveLoss,
    InfoNCELoss,
    NoContrastiveLoss,
    SoftNearestNeighborLoss,
    SupConInLoss,
    SupConLoss,
    TripletLoss,
)
from clipo.contrastive.modes import ContrastiveLossTerm, ContrastiveMode, ContrastiveRewardShaping, HeadStep
from clipo.contrastive.objective import ContrastiveObjective, ContrastiveOutput
from clipo.contrastive.poolers import AttentionPooler, LastTokenPooler, MaxPooler, MeanPooler, Pooler
from clipo.contrastive.sets import ContrastiveSets, build_sets, sample_positives
from clipo.contrastive.shaping import contrastive_reward, similarity_stats

__all__ = [
    "AttentionPooler",
    "ContrastiveLoss",
    "ContrastiveLossTerm",
    "ContrastiveMode",
    "ContrastiveObjective",
    "ContrastiveOutput",
    "ContrastiveRewardShaping",
    "ContrastiveSets",
    "FixedRandomHead",
    "HeadStep",
    "InfoNCELoss",
    "LastTokenPooler",
    "LinearHead",
    "MLPHead",
    "MaxPooler",
    "MeanPooler",
    "NoContrastiveLoss",
    "Pooler",
    "SoftNearestNeighborLoss",
    "SupConInLoss",
    "SupConLoss",
    "TripletLoss",
    "build_sets",
    "contrastive_reward",
    "sample_positives",
    "similarity_stats",
]
