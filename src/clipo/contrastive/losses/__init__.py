"""The `loss=` options, one file each; `ContrastiveLoss` (base.py) holds what they share.

Every option module is imported here so that its registration (LOSSES) never depends on
what else was imported first.
"""

from clipo.contrastive.losses.base import ContrastiveLoss
from clipo.contrastive.losses.infonce import InfoNCELoss
from clipo.contrastive.losses.none import NoContrastiveLoss
from clipo.contrastive.losses.soft_nn import SoftNearestNeighborLoss
from clipo.contrastive.losses.supcon import SupConLoss
from clipo.contrastive.losses.supcon_in import SupConInLoss
from clipo.contrastive.losses.triplet import TripletLoss

__all__ = [
    "ContrastiveLoss",
    "InfoNCELoss",
    "NoContrastiveLoss",
    "SoftNearestNeighborLoss",
    "SupConInLoss",
    "SupConLoss",
    "TripletLoss",
]
