"""`advantage=reinforce_pp`: group (or no) baseline, then whitening over the batch."""

from __future__ import annotations

import torch

from clipo.advantages.base import check_whiten_over, need_lengths, whiten
from clipo.groups import group_stats
from clipo.registry import ADVANTAGES

BASELINES = ("group", "none")


def reinforce_pp_advantages(rewards: torch.Tensor, groups: torch.Tensor, eps: float = 1e-8, baseline: str = "group",
                            whiten_over: str = "rollouts", lengths: torch.Tensor | None = None) -> torch.Tensor:
    """REINFORCE++ (Hu et al. 2025, https://arxiv.org/abs/2501.03262): remove the group mean (`baseline="group"`,
    the "REINFORCE++-baseline" variant, verl's `reinforce_plus_plus_baseline`) or nothing (`"none"`, verl's
    `reinforce_plus_plus` with an outcome reward and gamma 1), then whiten over the whole batch (`whiten`):
    over rollouts, or over tokens (each rollout weighted by its response length, as verl). With the group
    baseline, rollouts in groups of size 1 stay 0 and are left out of the statistics, and a group of equal
    rewards stays exactly 0 (its zeros count in the statistics).

    Args:
        rewards: [N] scalar reward per rollout.
        groups: [N] integer group id per rollout.
        eps: added to the batch variance.
        baseline: group or none.
        whiten_over: rollouts or tokens (needs `lengths`).
        lengths: [N] response tokens per rollout.

    Returns:
        [N] float32 advantages.
    """
    if baseline not in BASELINES:
        raise ValueError(f"reinforce_pp: baseline={baseline!r}; choose one of {BASELINES}")
    check_whiten_over("reinforce_pp", whiten_over)
    weights = torch.ones_like(rewards, dtype=torch.float32)
    if whiten_over == "tokens":
        weights = need_lengths("reinforce_pp with whiten_over=tokens", lengths).float()
    if baseline == "none":
        return whiten(rewards.float(), weights, eps)
    stats = group_stats(rewards, groups)
    counted = stats.per_rollout(stats.counts) > 1  # [N]
    equal = stats.per_rollout(stats.zero_variance)  # [N] in a group of equal rewards
    whitened = whiten(torch.where(counted, stats.centered, 0.0), torch.where(counted, weights, 0.0), eps)
    # a group of equal rewards stays exactly 0 (its centred rewards are 0 and, in exact arithmetic,
    # so is the batch mean of centred rewards over rollouts; in float it is a rounding residue)
    return torch.where(counted & ~equal, whitened, torch.zeros_like(whitened))


@ADVANTAGES.register("reinforce_pp")
class ReinforcePPAdvantage:
    """`advantage=reinforce_pp`: see `reinforce_pp_advantages`."""

    def __init__(self, eps: float = 1e-8, baseline: str = "group", whiten_over: str = "rollouts") -> None:
        if baseline not in BASELINES:
            raise ValueError(f"reinforce_pp: baseline={baseline!r}; choose one of {BASELINES}")
        check_whiten_over("reinforce_pp", whiten_over)
        self.eps, self.baseline, self.whiten_over = eps, baseline, whiten_over

    def __call__(self, rewards: torch.Tensor, groups: torch.Tensor, lengths: torch.Tensor | None = None,
                 components=None, component_weights=None) -> torch.Tensor:  # noqa: ANN001
        return reinforce_pp_advantages(rewards, groups, self.eps, self.baseline, self.whiten_over, lengths)
