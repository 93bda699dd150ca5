"""`advantage=grpo_passk`: only each group's best rollout is credited, by its margin over the runner-up."""

from __future__ import annotations

import torch

from clipo.groups import group_stats
from clipo.registry import ADVANTAGES


def grpo_passk_advantages(rewards: torch.Tensor, groups: torch.Tensor, eps: float = 1e-6,
                          scale: bool = True) -> torch.Tensor:
    """Pass@k training (arXiv 2503.19595), verl's `grpo_passk`: in each group the best rollout (the first
    of equal best ones) gets `r_max - r_second` (divided by the group's unbiased std + eps with `scale`,
    verl's `norm_adv_by_std_in_grpo`); every other rollout gets 0. A group of size 1 gets 0 (verl refuses
    it); equal best rewards give 0.

    Args:
        rewards: [N] scalar reward per rollout.
        groups: [N] integer group id per rollout.

    Returns:
        [N] float32 advantages.
    """
    stats = group_stats(rewards, groups)
    r, index = rewards.float(), stats.index
    positions = torch.arange(len(r), device=r.device)
    at_max = r == stats.per_rollout(torch.full_like(stats.mean, float("-inf")).scatter_reduce(
        0, index, r, "amax", include_self=False))
    best = torch.full_like(stats.first, len(r)).scatter_reduce(0, index[at_max], positions[at_max], "amin")  # [K]
    is_best = positions == best[index]  # [N]
    others = torch.where(is_best, float("-inf"), r)
    second = torch.full_like(stats.mean, float("-inf")).scatter_reduce(0, index, others, "amax", include_self=False)
    margin = r - second[index]  # [N], meaningful at the best
    if scale:
        margin = margin / (stats.per_rollout(stats.var).sqrt() + eps)
    keep = is_best & (stats.per_rollout(stats.counts) > 1)
    return torch.where(keep, margin, 0.0)


@ADVANTAGES.register("grpo_passk")
class GRPOPassKAdvantage:
    """`advantage=grpo_passk`: see `grpo_passk_advantages`."""

    def __init__(self, eps: float = 1e-6, scale: bool = True) -> None:
        self.eps, self.scale = eps, scale

    def __call__(self, rewards: torch.Tensor, groups: torch.Tensor, lengths=None, components=None,  # noqa: ANN001
                 component_weights=None) -> torch.Tensor:
        return grpo_passk_advantages(rewards, groups, self.eps, self.scale)
