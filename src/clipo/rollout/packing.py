"""Micro-batches by token budget (verl's `use_dynamic_bsz` / `ppo_max_token_len_per_gpu`).

Rollouts of similar length go together, and each micro-batch holds as many rollouts as fit in
`budget` tokens, counted by the training forward plan's own cost (`TrainingForward.tokens`: what
its layout computes, padding and shared prompts included). The step normaliser is computed over
the whole mini-batch, so gradient accumulation over any such partition gives the full-batch
gradient.

Shapes: `N` rollouts of one mini-batch.
"""

from __future__ import annotations

from typing import Callable

import torch

Cost = Callable[[list[int]], int]  # tokens the forward computes for these rollouts together


def pack_by_tokens(
    lengths: torch.Tensor, budget: int, cost: Cost, groups: torch.Tensor | None = None, whole_groups: bool = False,
    grow_budget: bool = False,
) -> list[torch.Tensor]:
    """Split rollouts into micro-batches of at most `budget` tokens, longest first.

    Args:
        lengths: [N] tokens of each rollout (prompt + response), for the order.
        budget: the most tokens a micro-batch may cost.
        cost: the forward's cost of a list of rollouts (indices into `lengths`).
        groups: [N] group ids. Groups are then taken in the order of their longest rollout and kept
            together, split only where a micro-batch is full: a shared-prompt forward runs each group's
            prompt once per micro-batch, so a group cut into many pieces would pay for it many times.
        whole_groups: never split a group (a loss taken per forward pass over a group's rollouts needs it).
        grow_budget: raise the budget to the largest unit that must share a forward instead of failing
            (`ppo.max_tokens_per_micro_batch=auto`).

    Returns:
        Index tensors (ascending within each) that partition `range(N)`.

    Raises:
        ValueError: a rollout (or, with `whole_groups`, a group) alone exceeds a fixed budget.
    """
    device, lengths = lengths.device, lengths.long().cpu()  # a few numbers: plan on the CPU
    n = len(lengths)
    _, group_of = torch.unique(groups.cpu() if groups is not None else torch.arange(n), return_inverse=True)  # [N]
    num_groups = int(group_of.max()) + 1 if n else 0
    group_len = torch.zeros(num_groups, dtype=torch.long).scatter_reduce(0, group_of, lengths, reduce="amax")
    group_rows = torch.bincount(group_of, minlength=num_groups)  # [G']
    units = _units(_order(lengths, group_of, group_len), group_of, group_rows, whole_groups and groups is not None)
    largest = max((cost(unit) for unit in units), default=0)
    if grow_budget:
        budget = max(budget, largest)
    elif largest > budget:
        unit = max(units, key=cost)
        what = f"a group of {len(unit)} rollouts" if len(unit) > 1 else "a rollout"
        must = "; whole groups must share a micro-batch" if len(unit) > 1 else ""
        raise ValueError(f"ppo.max_tokens_per_micro_batch={budget} is smaller than {what} ({largest} tokens as the "
                         f"forward computes them{must}); raise it to at least {largest}, or use auto")
    batches = _fill(units, budget, cost)
    return [torch.tensor(sorted(j for unit in b for j in unit), dtype=torch.long, device=device) for b in batches]


def _order(lengths: torch.Tensor, group_of: torch.Tensor, group_len: torch.Tensor) -> list[int]:
    """Groups by their longest rollout, then each group's rollouts longest first (stable sorts, last key first)."""
    order = torch.sort(lengths, descending=True, stable=True).indices
    order = order[torch.sort(group_of[order], stable=True).indices]
    return order[torch.sort(group_len[group_of[order]], descending=True, stable=True).indices].tolist()


def _units(order: list[int], group_of: torch.Tensor, group_rows: torch.Tensor, whole_groups: bool) -> list[list[int]]:
    """What may not be split: single rollouts, or whole groups (consecutive in `order`)."""
    if not whole_groups:
        return [[j] for j in order]
    units, i = [], 0
    while i < len(order):  # a loop over groups, never over tokens
        size = int(group_rows[group_of[order[i]]])
        units.append(order[i : i + size])
        i += size
    return units


def _fill(units: list[list[int]], budget: int, cost: Cost) -> list[list[list[int]]]:
    """Micro-batches of units in order, each as full as `budget` allows."""
    batches, current = [], []
    for unit in units:
        if current and cost([j for u in current + [unit] for j in u]) > budget:
            batches.append(current)
            current = []
        current.append(unit)
    return batches + [current] if current else batches
