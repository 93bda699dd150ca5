"""`advantage=grpo`: group-normalised advantages (DeepSeekMath)."""

from __future__ import annotations

import torch

from clipo.groups import group_stats
from clipo.registry import ADVANTAGES


def grpo_advantages(rewards: torch.Tensor, groups: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """GRPO outcome advantage `(r - group mean) / (group std + eps)`.

    DeepSeekMath, Shao et al. 2024, https://arxiv.org/abs/2402.03300 (Sec. 4.1.2).
    The std is the unbiased sample std (divides by G-1), as `torch.std` in verl.

    Args:
        rewards: [N] scalar reward per rollout.
        groups: [N] integer group (prompt) id per rollout.
        eps: added to the std so zero-variance groups get advantage 0, not NaN.

    Returns:
        [N] float32 advantages; 0 for groups of size 1 and groups with equal rewards.
    """
    # the group std, not var.sqrt(): the variance of float32 rewards can overflow float32 (clipo.groups)
    return group_stats(rewards, groups).standardized(eps)  # a size-1 or equal-reward group has centered = 0


@ADVANTAGES.register("grpo")
class GRPOAdvantage:
    """`advantage=grpo`: see `grpo_advantages`."""

    def __init__(self, eps: float = 1e-6) -> None:
        self.eps = eps

    def __call__(self, rewards: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        return grpo_advantages(rewards, groups, self.eps)
