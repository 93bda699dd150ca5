"""Small tensor helpers shared by the losses.

Shapes: `N` rollouts, `T` response tokens, `D` hidden size.
"""

from __future__ import annotations

import torch


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of `values` where `mask` is true."""
    # where, not multiply: padding may hold inf/NaN, and 0 * inf is NaN
    masked = torch.where(mask.bool(), values, 0.0)
    return masked.sum() if dim is None else masked.sum(dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `values` where `mask` is true; 0 (not NaN) where the mask is empty."""
    count = mask.to(values.dtype).sum() if dim is None else mask.to(values.dtype).sum(dim)
    return masked_sum(values, mask, dim) / count.clamp(min=1)


def group_ids_to_index(groups: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Map arbitrary group ids [N] to contiguous indices 0..K-1 and return (index[N], K)."""
    _, index = torch.unique(groups, return_inverse=True)
    return index, int(index.max().item()) + 1 if index.numel() else 0


def group_mean(values: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Mean of `values` [N] within each rollout's group, broadcast back to [N]."""
    index, num_groups = group_ids_to_index(groups)
    sums = torch.zeros(num_groups, dtype=values.dtype, device=values.device).index_add_(0, index, values)
    counts = torch.bincount(index, minlength=num_groups).to(values.dtype)
    return (sums / counts)[index]
