"""What the outcome-reward advantage estimators share; one file per estimator (`advantage=` option).

Shapes: `N` rollouts in the batch, `F` reward components; each rollout has one scalar reward and one
group id (its prompt). Group ids are arbitrary integers and groups may differ in size (dynamic
sampling drops whole groups; the last prompt of a dataset may be short). Every estimator is called as

    estimator(rewards[N], groups[N], lengths[N] = None, components[N, F] = None, component_weights[F] = None)

and returns advantages [N] float32. `lengths` (response tokens) serve the estimators that weigh
rollouts by length (OPO, whitening over tokens as verl does); `components` (each reward function's
score, and the shaping added on top) with their weights serve GDPO; the others ignore both. Every
estimator is vectorised over groups and gives a group of size 1 the advantage 0: a lone rollout has
no baseline to compare against, so it carries no learning signal (verl instead leaves a lone
rollout's raw reward, or `r / (1 + eps)` for GRPO). Statistics over "the batch" are the global
batch's under data parallelism (`sum_over_ranks`).
"""

from __future__ import annotations

import torch

from clipo.distributed import sum_over_ranks
from clipo.groups import group_stats


def group_stats_per_rollout(
    rewards: torch.Tensor, groups: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per rollout: `r - group mean` (exactly 0 in a group of equal rewards, see `clipo.groups`),
    the group's unbiased variance (0 for size 1) and its size, each [N]."""
    stats = group_stats(rewards, groups)
    return stats.centered, stats.per_rollout(stats.var), stats.per_rollout(stats.counts)


def whiten(values: torch.Tensor, weights: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """`(x - mean) / sqrt(var + eps)` with the weighted mean and unbiased variance over the global batch.

    `weights` [N] count each rollout: 1 (statistics over rollouts), 0 (left out), or its response length
    (over tokens: each token of a rollout carries its value, as verl's `masked_whiten` over a
    `[N, T]` tensor). The variance divides by (total weight - 1), verl's Bessel correction over tokens.
    """
    w, x = weights.double(), values.double()
    n, total, total_sq = sum_over_ranks(torch.stack([w.sum(), (w * x).sum(), (w * x * x).sum()]))
    mean = total / n.clamp(min=1)
    var = (total_sq - n * mean**2).clamp(min=0) / (n - 1).clamp(min=1)
    return ((values - mean.float()) * torch.rsqrt(var.float() + eps)).float()


def check_whiten_over(name: str, whiten_over: str) -> None:
    if whiten_over not in ("rollouts", "tokens"):
        raise ValueError(f"{name}: whiten_over={whiten_over!r}: choose rollouts (one value per rollout) or tokens "
                         "(each rollout weighted by its length, as verl)")


def need_lengths(name: str, lengths: torch.Tensor | None) -> torch.Tensor:
    if lengths is None:
        raise ValueError(f"{name} needs each rollout's response length (the estimator's `lengths` argument)")
    return lengths
