"""Outcome-reward advantage estimators for group-sampled rollouts.

Shapes: `N` rollouts in the batch; each rollout has one scalar reward and one
group id (its prompt). Group ids are arbitrary integers and groups may differ in
size (dynamic sampling drops whole groups; the last prompt of a dataset may be
short). Every estimator maps `(rewards[N], groups[N]) -> advantages[N]` float32,
is vectorised over groups, and gives a group of size 1 the advantage 0: a lone
rollout has no baseline to compare against, so it carries no learning signal.
(verl instead leaves a lone rollout's raw reward, or `r / (1 + eps)` for GRPO.)
"""

from __future__ import annotations

import torch

from clipo.distributed import sum_over_ranks
from clipo.groups import group_stats
from clipo.registry import ADVANTAGES


def _group_stats(rewards: torch.Tensor, groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-rollout group (mean, unbiased variance, size), each [N]; variance 0 for groups of size 1."""
    stats = group_stats(rewards, groups)
    return stats.per_rollout(stats.mean), stats.per_rollout(stats.var), stats.per_rollout(stats.counts)


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
    mean, var, _ = _group_stats(rewards, groups)
    return (rewards.float() - mean) / (var.sqrt() + eps)  # a size-1 group has r - mean = 0


def dr_grpo_advantages(rewards: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Dr. GRPO advantage `r - group mean` (no std division, which biases towards easy/hard prompts).

    Liu et al. 2025, "Understanding R1-Zero-Like Training", https://arxiv.org/abs/2503.20783.

    Args:
        rewards: [N] scalar reward per rollout.
        groups: [N] integer group id per rollout.

    Returns:
        [N] float32 advantages (0 for groups of size 1).
    """
    mean, _, _ = _group_stats(rewards, groups)
    return rewards.float() - mean


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
    mean, _, size = _group_stats(rewards, groups)
    return (rewards.float() - mean) * size / (size - 1).clamp(min=1)


def reinforce_pp_advantages(rewards: torch.Tensor, groups: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """REINFORCE++ (with group baseline): remove the group mean, then whiten over the whole batch.

    Hu et al. 2025, https://arxiv.org/abs/2501.03262 (the "REINFORCE++-baseline" variant).
    Whitening is `(x - mean) / sqrt(var + eps)` with the unbiased batch variance, as verl's
    `masked_whiten`; unlike verl, which whitens over tokens (weighting rollouts by length), the
    statistics here are over rollouts, since the estimator sees no lengths. Rollouts in groups of
    size 1 stay 0 and are left out of the batch statistics. Under data parallelism the batch is
    the global one: the sums behind the statistics are added over ranks.

    Args:
        rewards: [N] scalar reward per rollout.
        groups: [N] integer group id per rollout.
        eps: added to the batch variance.

    Returns:
        [N] float32 advantages.
    """
    mean, _, size = _group_stats(rewards, groups)
    centered = rewards.float() - mean  # [N]
    counted = size > 1
    kept = torch.where(counted, centered, 0.0).double()
    # sums, not means, so that under data parallelism the statistics are the global batch's
    n, total, total_sq = sum_over_ranks(torch.stack([counted.sum().double(), kept.sum(), (kept**2).sum()]))
    batch_mean = total / n.clamp(min=1)
    batch_var = (total_sq - n * batch_mean**2).clamp(min=0) / (n - 1).clamp(min=1)
    whitened = (centered - batch_mean.float()) * torch.rsqrt(batch_var.float() + eps)
    return torch.where(counted, whitened, torch.zeros_like(whitened))


@ADVANTAGES.register("grpo")
class GRPOAdvantage:
    """`advantage=grpo`: see `grpo_advantages`."""

    def __init__(self, eps: float = 1e-6) -> None:
        self.eps = eps

    def __call__(self, rewards: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        return grpo_advantages(rewards, groups, self.eps)


@ADVANTAGES.register("dr_grpo")
class DrGRPOAdvantage:
    """`advantage=dr_grpo`: see `dr_grpo_advantages`."""

    def __call__(self, rewards: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        return dr_grpo_advantages(rewards, groups)


@ADVANTAGES.register("rloo")
class RLOOAdvantage:
    """`advantage=rloo`: see `rloo_advantages`."""

    def __call__(self, rewards: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        return rloo_advantages(rewards, groups)


@ADVANTAGES.register("reinforce_pp")
class ReinforcePPAdvantage:
    """`advantage=reinforce_pp`: see `reinforce_pp_advantages`."""

    def __init__(self, eps: float = 1e-8) -> None:
        self.eps = eps

    def __call__(self, rewards: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        return reinforce_pp_advantages(rewards, groups, self.eps)
