"""`advantage=opo`: the length-weighted group baseline of On-Policy RL with Optimal reward baseline."""

from __future__ import annotations

import torch

from clipo.advantages.base import need_lengths
from clipo.groups import group_stats
from clipo.registry import ADVANTAGES


def opo_advantages(rewards: torch.Tensor, groups: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """OPO (Hao et al. 2025, https://arxiv.org/abs/2505.23585): `r - b`, with the group's baseline
    `b = sum_i |o_i| r_i / sum_i |o_i|` (the optimal baseline when the gradient's norm grows with the
    response length), as verl's `opo`. A group of equal rewards gets exactly 0, a group of size 1 gets 0
    (verl: its raw reward), and a group whose responses are all empty falls back to the plain mean.

    Args:
        rewards: [N] scalar reward per rollout.
        groups: [N] integer group id per rollout.
        lengths: [N] response tokens per rollout.

    Returns:
        [N] float32 advantages.
    """
    stats = group_stats(rewards, groups)
    r, w = rewards.float(), lengths.float()
    index = stats.index
    weighted = torch.zeros_like(stats.mean).index_add_(0, index, w * r)  # [K]
    total = torch.zeros_like(stats.mean).index_add_(0, index, w)  # [K]
    baseline = torch.where(total > 0, weighted / total.clamp(min=1e-12), stats.mean)  # [K]
    advantages = r - baseline[index]
    keep = (stats.per_rollout(stats.counts) > 1) & ~stats.per_rollout(stats.zero_variance)
    return torch.where(keep, advantages, 0.0)


@ADVANTAGES.register("opo")
class OPOAdvantage:
    """`advantage=opo`: see `opo_advantages`."""

    def __call__(self, rewards: torch.Tensor, groups: torch.Tensor, lengths: torch.Tensor | None = None,
                 components=None, component_weights=None) -> torch.Tensor:  # noqa: ANN001
        return opo_advantages(rewards, groups, need_lengths("advantage=opo", lengths))
