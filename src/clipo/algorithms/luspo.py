"""`algorithm=luspo`: GSPO with each sequence's loss scaled by its length."""

from __future__ import annotations

from typing import Any

from clipo.algorithms.gspo import GSPOLoss
from clipo.registry import ALGORITHMS


@ALGORITHMS.register("luspo")
class LUSPOLoss(GSPOLoss):
    """`algorithm=luspo`: LUSPO (arXiv 2602.05261), TRL's `loss_type="luspo"`: GSPO's clipped sequence
    ratio, aggregated as `seq-mean-token-sum` (each sequence's loss times its length, averaged over
    sequences), which removes GSPO's bias towards short responses. Equal to `algorithm=gspo
    aggregation=seq-mean-token-sum`; registered under its own name to be found by it."""

    def __init__(
        self,
        clip_low: float = 3e-4,
        clip_high: float = 4e-4,
        aggregation: str = "seq-mean-token-sum",
        **common: Any,
    ) -> None:
        super().__init__(clip_low, clip_high, aggregation, **common)
