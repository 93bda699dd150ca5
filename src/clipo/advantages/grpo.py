"""`advantage=grpo`: group-normalised advantages (DeepSeekMath), scaled by the group's or the batch's std."""

from __future__ import annotations

import torch

from clipo.advantages.base import group_stats_per_rollout
from clipo.distributed import sum_over_ranks
from clipo.groups import group_stats
from clipo.registry import ADVANTAGES

SCALES = ("group", "batch")


def grpo_advantages(rewards: torch.Tensor, groups: torch.Tensor, eps: float = 1e-6,
                    scale: str = "group") -> torch.Tensor:
    """GRPO outcome advantage `(r - group mean) / (std + eps)`.

    DeepSeekMath, Shao et al. 2024, https://arxiv.org/abs/2402.03300 (Sec. 4.1.2). `scale="group"`:
    the group's unbiased std (divides by G-1), as `torch.std` in verl and TRL's `scale_rewards="group"`;
    `scale="batch"`: the unbiased std of all the batch's rewards (TRL's `scale_rewards="batch"`, after
    PPO Lite, arXiv 2508.08221), over every process. TRL uses eps 1e-4, verl 1e-6.

    Args:
        rewards: [N] scalar reward per rollout.
        groups: [N] integer group (prompt) id per rollout.
        eps: added to the std so zero-variance groups get advantage 0, not NaN.
        scale: group or batch.

    Returns:
        [N] float32 advantages; 0 for groups of size 1 and groups with equal rewards.
    """
    if scale not in SCALES:
        raise ValueError(f"grpo advantage: scale={scale!r}; choose one of {SCALES} (no scaling: advantage=dr_grpo)")
    if scale == "group":  # the group's std, not var.sqrt(): float32 rewards' variance can overflow float32
        return group_stats(rewards, groups).standardized(eps)  # a size-1 or equal-reward group has centered = 0
    centered, _, _ = group_stats_per_rollout(rewards, groups)
    r = rewards.double()
    n, total, total_sq = sum_over_ranks(torch.stack([r.new_tensor(float(len(r))), r.sum(), (r * r).sum()]))
    std = ((total_sq - total**2 / n.clamp(min=1)).clamp(min=0) / (n - 1).clamp(min=1)).sqrt()  # float64: no overflow
    return (centered.double() / (std + eps)).float()


@ADVANTAGES.register("grpo")
class GRPOAdvantage:
    """`advantage=grpo`: see `grpo_advantages`."""

    def __init__(self, eps: float = 1e-6, scale: str = "group") -> None:
        if scale not in SCALES:
            raise ValueError(f"grpo advantage: scale={scale!r}; choose one of {SCALES} (no scaling: advantage=dr_grpo)")
        self.eps, self.scale = eps, scale

    def __call__(self, rewards: torch.Tensor, groups: torch.Tensor, lengths=None, components=None,  # noqa: ANN001
                 component_weights=None) -> torch.Tensor:
        return grpo_advantages(rewards, groups, self.eps, self.scale)
