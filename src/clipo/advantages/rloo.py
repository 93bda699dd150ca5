"""`advantage=rloo`: leave-one-out baseline."""

from __future__ import annotations

import torch

from clipo.advantages.base import group_stats_per_rollout
from clipo.registry import ADVANTAGES


def rloo_advantages(rewards: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """RLOO advantage `r_i - mean_{j != i} r_j = G / (G - 1) * (r_i - group mean)`.

    Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization",
    https://arxiv.org/abs/2402.14740.

    Args:
        rewards: [N] scalar reward per rollout.
        groups: [N] integer group id per rollout.

    Returns:
        [N] float32 advantages (0 for groups of size 1, which have no other rollout).
    """
    centered, _, size = group_stats_per_rollout(rewards, groups)
    return centered * size / (size - 1).clamp(min=1)


@ADVANTAGES.register("rloo")
class RLOOAdvantage:
    """`advantage=rloo`: see `rloo_advantages`."""

    def __call__(self, rewards: torch.Tensor, groups: torch.Tensor, lengths=None, components=None,  # noqa: ANN001
                 component_weights=None) -> torch.Tensor:
        return rloo_advantages(rewards, groups)
