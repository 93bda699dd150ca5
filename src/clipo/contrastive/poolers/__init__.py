"""The `pooler=` options, one file each; `Pooler` (base.py) holds what they share.

Every option module is imported here so that its registration (POOLERS) never depends on
what else was imported first.
"""

from clipo.contrastive.poolers.attention import AttentionPooler
from clipo.contrastive.poolers.base import Pooler
from clipo.contrastive.poolers.last import LastTokenPooler
from clipo.contrastive.poolers.max import MaxPooler
from clipo.contrastive.poolers.mean import MeanPooler

__all__ = ["AttentionPooler", "LastTokenPooler", "MaxPooler", "MeanPooler", "Pooler"]
