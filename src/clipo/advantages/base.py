"""What the outcome-reward advantage estimators share; one file per estimator (`advantage=` option).

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

from clipo.groups import group_stats


def group_stats_per_rollout(
    rewards: torch.Tensor, groups: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per rollout: `r - group mean` (exactly 0 in a group of equal rewards, see `clipo.groups`),
    the group's unbiased variance (0 for size 1) and its size, each [N]."""
    stats = group_stats(rewards, groups)
    return stats.centered, stats.per_rollout(stats.var), stats.per_rollout(stats.counts)
