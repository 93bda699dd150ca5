"""Policy-gradient objectives (`algorithm=`), loss aggregation and KL estimators."""

from clipo.policy_loss.aggregation import AGGREGATIONS, StepNormalizer, aggregate
from clipo.policy_loss.algorithms import DAPOLoss, GMPOLoss, GRPOLoss, GSPOLoss
from clipo.policy_loss.kl import KL_ESTIMATORS, token_kl
from clipo.policy_loss.objectives import (
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
    "StepNormalizer",
    "TokenLosses",
    "aggregate",
    "clipped_surrogate",
    "gmpo_token_losses",
    "gspo_token_losses",
    "ppo_token_losses",
    "token_kl",
]
