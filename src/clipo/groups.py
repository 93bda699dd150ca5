"""Statistics of rollout groups: the one place that turns group ids into per-group numbers.

Shapes: `N` rollouts, `K` groups. Group ids are arbitrary integers: groups may differ in size
(dynamic sampling drops whole groups, a refill adds more) and their rollouts need not be
contiguous, so nothing here assumes `view(-1, G)`. Groups are numbered 0..K-1 in the order of
their sorted ids (`torch.unique`).

A group whose values are all equal (max == min) has exactly its value as mean, and 0 as centred
values and variance: in float32 the mean of 16 copies of 0.9 is one rounding step off 0.9, and
GRPO's division by `std + 1e-6` turned that step into advantages up to 0.1 for a group that
carries no signal.

Sums and squares are taken in float64 and the results rounded to float32 once, so no finite float32
value overflows them: a group of rewards 0 and 1e30 has a float32 `std` (7.1e29) and standardized
values of -/+0.71, where squares in float32 overflowed to an infinite std and advantages of 0. Its
`var` (5e59) is beyond float32 and reads inf: divide by `std` (or use `standardized`), not `var.sqrt()`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GroupStats:
    """Per-group statistics of one value per rollout (e.g. the verifier's rewards).

    Attributes:
        index: [N] long, the group (0..K-1) of each rollout.
        counts: [K] float32, rollouts per group.
        mean: [K] float32, group mean (exactly the value of a zero-variance group).
        var: [K] float32, unbiased group variance (divides by size - 1, like `torch.var`); 0 for size 1;
            inf where it exceeds float32 (a spread of values beyond about 1.8e19).
        std: [K] float32, the square root of the variance, taken before rounding to float32 (finite for
            any float32 values whose spread is below float32's largest number).
        zero_variance: [K] bool, all of the group's values are equal (exact: max == min), which
            includes groups of size 1.
        first: [K] long, position of each group's first rollout (for "in order of appearance").
        centered: [N] float32, each value minus its group's mean; exactly 0 in a zero-variance
            group, whatever the values.
    """

    index: torch.Tensor
    counts: torch.Tensor
    mean: torch.Tensor
    var: torch.Tensor
    std: torch.Tensor
    zero_variance: torch.Tensor
    first: torch.Tensor
    centered: torch.Tensor

    @property
    def num_groups(self) -> int:
        return self.counts.numel()

    @property
    def zero_variance_fraction(self) -> torch.Tensor:
        """[] float32: fraction of groups (not rollouts) whose values are all equal; 0 for no groups."""
        return self.zero_variance.float().sum() / max(self.num_groups, 1)

    def per_rollout(self, per_group: torch.Tensor) -> torch.Tensor:
        """Broadcast a [K] per-group tensor back to its rollouts: [N]."""
        return per_group[self.index]

    def standardized(self, eps: float) -> torch.Tensor:
        """[N] float32 `centered / (group std + eps)`, computed in float64 (no overflow for any finite float32
        values, even where `std` itself is beyond float32); exactly 0 in a zero-variance group."""
        centered = self.centered.double()
        var = torch.zeros_like(self.counts, dtype=torch.float64).index_add_(0, self.index, centered**2)
        std = (var / (self.counts.double() - 1).clamp(min=1)).sqrt()  # [K]
        return (centered / (std[self.index] + eps)).float()


def group_stats(values: torch.Tensor, groups: torch.Tensor) -> GroupStats:
    """Count, mean, unbiased variance and zero-variance flag of `values` [N] within each group.

    Args:
        values: [N] one number per rollout (any float or integer dtype; computed in float64, returned in float32).
        groups: [N] integer group id per rollout.

    Returns:
        `GroupStats` over the K distinct ids.
    """
    if values.dim() != 1 or groups.dim() != 1 or values.shape != groups.shape:
        raise ValueError(
            f"values and groups must be 1-D of equal length, got {tuple(values.shape)} and {tuple(groups.shape)}"
        )
    if groups.dtype.is_floating_point or groups.dtype == torch.bool:
        raise ValueError(f"groups must hold integer group ids, got dtype {groups.dtype}; pass e.g. groups.long()")
    values = values.double()  # float32 values: no sum or square overflows in float64
    _, index = torch.unique(groups, return_inverse=True)
    num_groups = int(index.max()) + 1 if index.numel() else 0
    counts = torch.bincount(index, minlength=num_groups).to(values.dtype)  # [K]
    empty = torch.empty(num_groups, dtype=values.dtype, device=values.device)
    high = empty.scatter_reduce(0, index, values, "amax", include_self=False)
    low = empty.clone().scatter_reduce(0, index, values, "amin", include_self=False)
    zero_variance = high == low  # [K]
    sums = torch.zeros_like(empty).index_add_(0, index, values)
    mean = torch.where(zero_variance, high, sums / counts)  # a sum of equal floats need not divide back exactly
    centered = torch.where(zero_variance[index], 0.0, values - mean[index])  # [N]
    var = torch.zeros_like(sums).index_add_(0, index, centered**2) / (counts - 1).clamp(min=1)  # [K]
    positions = torch.arange(index.numel(), device=index.device)
    first = torch.full((num_groups,), index.numel(), dtype=torch.long, device=index.device)
    first = first.scatter_reduce(0, index, positions, "amin")
    return GroupStats(index=index, counts=counts.float(), mean=mean.float(), var=var.float(), std=var.sqrt().float(),
                      zero_variance=zero_variance, first=first, centered=centered.float())
