"""`algorithm=dapo`: DAPO's clip-higher objective (its sampling tricks are `sampling=dapo`, see `clipo.rl.dynamic_sampling`)."""

from __future__ import annotations

from typing import Any

from clipo.algorithms.grpo import GRPOLoss
from clipo.registry import ALGORITHMS


@ALGORITHMS.register("dapo")
class DAPOLoss(GRPOLoss):
    """`algorithm=dapo`: DAPO (Yu et al. 2025, arXiv 2503.14476): the clipped objective with
    clip-higher (0.2 / 0.28) and token-mean aggregation; dual clip 10.0 as verl's DAPO recipe.

    DAPO's sampling-side tricks, dynamic sampling and overlong shaping, are not part of the loss:
    `algorithm=dapo` turns them on by composing `sampling=dapo` (configs/sampling/dapo.yaml).
    """

    def __init__(
        self,
        clip_low: float = 0.2,
        clip_high: float = 0.28,
        clip_c: float | None = 10.0,
        aggregation: str = "token-mean",
        **common: Any,
    ) -> None:
        super().__init__(clip_low, clip_high, clip_c, aggregation, **common)
