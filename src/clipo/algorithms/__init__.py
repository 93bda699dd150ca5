"""The `algorithm=` options (policy-gradient objectives, one file each), loss aggregation and KL estimators.

Every option module is imported here so that its registration (ALGORITHMS) never depends on
what else was imported first.
"""

from clipo.algorithms.aggregation import AGGREGATIONS, StepNormalizer, aggregate
from clipo.algorithms.base import PolicyLossBase
from clipo.algorithms.dapo import DAPOLoss
from clipo.algorithms.gmpo import GMPOLoss
from clipo.algorithms.grpo import GRPOLoss
from clipo.algorithms.gspo import GSPOLoss
from clipo.algorithms.kl import KL_ESTIMATORS, token_kl
from clipo.algorithms.objectives import (
    TokenLosses,
    clipped_surrogate,
    gmpo_token_losses,
    gspo_token_losses,
    ppo_token_losses,
)

__all__ = [
    "AGGREGATIONS",
    "KL_ESTIMATORS",
    "DAPOLoss",
    "GMPOLoss",
    "GRPOLoss",
    "GSPOLoss",
    "PolicyLossBase",
    "StepNormalizer",
    "TokenLosses",
    "aggregate",
    "clipped_surrogate",
    "gmpo_token_losses",
    "gspo_token_losses",
    "ppo_token_losses",
    "token_kl",
]
