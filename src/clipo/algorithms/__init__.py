"""The `algorithm=` options (policy-gradient objectives, one file each), loss aggregation and KL estimators.

Every option module is imported here so that its registration (ALGORITHMS) never depends on
what else was imported first.
"""

from clipo.algorithms.aggregation import AGGREGATIONS, StepNormalizer, aggregate, mixed_group_count
from clipo.algorithms.base import PolicyLossBase
from clipo.algorithms.cispo import CISPOLoss
from clipo.algorithms.clip_cov import ClipCovLoss
from clipo.algorithms.conspo import ConSPOLoss
from clipo.algorithms.dapo import DAPOLoss
from clipo.algorithms.dppo_kl import DPPOKLLoss
from clipo.algorithms.dppo_tv import DPPOTVLoss
from clipo.algorithms.dro import DROLoss
from clipo.algorithms.gmpo import GMPOLoss
from clipo.algorithms.gpg import GPGLoss
from clipo.algorithms.grpo import GRPOLoss
from clipo.algorithms.gspo import GSPOLoss
from clipo.algorithms.inputs import LossInputs
from clipo.algorithms.kl import KL_ESTIMATORS, token_kl
from clipo.algorithms.kl_cov import KLCovLoss
from clipo.algorithms.luspo import LUSPOLoss
from clipo.algorithms.objectives import (
    TokenLosses,
    clipped_surrogate,
    gmpo_token_losses,
    gspo_token_losses,
    ppo_token_losses,
)
from clipo.algorithms.sapo import SAPOLoss
from clipo.algorithms.vespo import VESPOLoss

__all__ = [
    "AGGREGATIONS",
    "KL_ESTIMATORS",
    "CISPOLoss",
    "ClipCovLoss",
    "ConSPOLoss",
    "DAPOLoss",
    "DPPOKLLoss",
    "DPPOTVLoss",
    "DROLoss",
    "GMPOLoss",
    "GPGLoss",
    "GRPOLoss",
    "GSPOLoss",
    "KLCovLoss",
    "LUSPOLoss",
    "LossInputs",
    "PolicyLossBase",
    "SAPOLoss",
    "StepNormalizer",
    "TokenLosses",
    "VESPOLoss",
    "aggregate",
    "clipped_surrogate",
    "gmpo_token_losses",
    "gspo_token_losses",
    "mixed_group_count",
    "ppo_token_losses",
    "token_kl",
]
