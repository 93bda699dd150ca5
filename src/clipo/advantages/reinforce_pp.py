"""`advantage=reinforce_pp`: group baseline, then batch whitening."""

from __future__ import annotations

import torch

from clipo.distributed import sum_over_ranks
from clipo.groups import group_stats
from clipo.registry import ADVANTAGES


def reinforce_pp_advantages(rewards: torch.Tensor, groups: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """REINFORCE++ (with group baseline): remove the group mean, then whiten over the whole batch.

    Hu et al. 2025, https://arxiv.org/abs/2501.03262 (the "REINFORCE++-baseline" variant).
    Whitening is `(x - mean) / sqrt(var + eps)` with the unbiased batch variance, as verl's
    `masked_whiten`; unlike verl, which whitens over tokens (weighting rollouts by length), the
    statistics here are over rollouts, since the estimator sees no lengths. Rollouts in groups of
    size 1 stay 0 and are left out of the batch statistics; a group of equal rewards stays exactly 0
    (its zeros count in the statistics). Under data parallelism the batch is the global one: the
    sums behind the statistics are added over ranks.

    Args:
        rewards: [N] scalar reward per rollout.
        groups: [N] integer group id per rollout.
        eps: added to the batch variance.

    Returns:
        [N] float32 advantages.
    """
    stats = group_stats(rewards, groups)
    centered, size = stats.centered, stats.per_rollout(stats.counts)  # [N]
    counted = size > 1
    equal = stats.per_rollout(stats.zero_variance)  # [N] in a group of equal rewards
    kept = torch.where(counted, centered, 0.0).double()
    # sums, not means, so that under data parallelism the statistics are the global batch's
    n, total, total_sq = sum_over_ranks(torch.stack([counted.sum().double(), kept.sum(), (kept**2).sum()]))
    batch_mean = total / n.clamp(min=1)
    batch_var = (total_sq - n * batch_mean**2).clamp(min=0) / (n - 1).clamp(min=1)
    whitened = (centered - batch_mean.float()) * torch.rsqrt(batch_var.float() + eps)
    # a group of equal rewards stays exactly 0 (its centred rewards are 0 and, in exact arithmetic,
    # so is the batch mean of centred rewards; in float it is a rounding residue)
    return torch.where(counted & ~equal, whitened, torch.zeros_like(whitened))


@ADVANTAGES.register("reinforce_pp")
class ReinforcePPAdvantage:
    """`advantage=reinforce_pp`: see `reinforce_pp_advantages`."""

    def __init__(self, eps: float = 1e-8) -> None:
        self.eps = eps

    def __call__(self, rewards: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        return reinforce_pp_advantages(rewards, groups, self.eps)
