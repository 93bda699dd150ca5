"""`advantage=dr_grpo`: group-centred advantages without the std division."""

from __future__ import annotations

import torch

from clipo.advantages.base import group_stats_per_rollout
from clipo.registry import ADVANTAGES


def dr_grpo_advantages(rewards: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Dr. GRPO advantage `r - group mean` (no std division, which biases towards easy/hard prompts).

    Liu et al. 2025, "Understanding R1-Zero-Like Training", https://arxiv.org/abs/2503.20783.

    Args:
        rewards: [N] scalar reward per rollout.
        groups: [N] integer group id per rollout.

    Returns:
        [N] float32 advantages (0 for groups of size 1).
    """
    centered, _, _ = group_stats_per_rollout(rewards, groups)
    return centered


@ADVANTAGES.register("dr_grpo")
class DrGRPOAdvantage:
    """`advantage=dr_grpo`: see `dr_grpo_advantages`."""

    def __call__(self, rewards: torch.Tensor, groups: torch.Tensor, lengths=None, components=None,  # noqa: ANN001
                 component_weights=None) -> torch.Tensor:
        return dr_grpo_advantages(rewards, groups)
