"""Micro-batches by token budget (verl's `use_dynamic_bsz` / `ppo_max_token_len_per_gpu`).

Rollouts of similar length go together, and each micro-batch holds as many rollouts as fit in
`budget` tokens: the real tokens a padding-free forward computes (each group's prompt once, then
the responses; `clipo.rollout.packed`) when prompt lengths are given, else the padded tokens
(rows x the longest rollout, prompt + response tokens, in it). The step normaliser is computed over the
whole mini-batch, so gradient accumulation over any such partition gives the full-batch
gradient.

Shapes: `N` rollouts of one mini-batch.
"""

from __future__ import annotations

import torch


def pack_by_tokens(
    lengths: torch.Tensor,
    budget: int,
    groups: torch.Tensor | None = None,
    whole_groups: bool = False,
    min_batches: int = 1,
    prompt_lengths: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """Split rollouts into micro-batches of at most `budget` tokens, longest first.

    Args:
        lengths: [N] tokens of each rollout (prompt + response).
        budget: the most tokens a micro-batch may hold: real tokens with `prompt_lengths`
            (each group's prompt once plus every response), else padded ones (rows x longest length).
        groups: [N] group ids. Groups are then taken in the order of their longest rollout and
            kept together, split only where a micro-batch is full: the training forward runs each
            group's prompt once per micro-batch (`clipo.rollout.shared_prompt`), so a group cut
            into many pieces would pay for its prompt many times.
        whole_groups: never split a group (the contrastive loss taken per forward pass needs it).
        min_batches: at least this many micro-batches (the largest are halved): under data
            parallelism every rank must run the same number of backward passes and collectives.
        prompt_lengths: [N] prompt tokens of each rollout; counts real tokens (padding-free forward).

    Returns:
        Index tensors (ascending within each) that partition `range(N)`.

    Raises:
        ValueError: a rollout (or, with `whole_groups`, a group) alone exceeds the budget.
    """
    device, lengths = lengths.device, lengths.long().cpu()  # a few numbers: plan on the CPU
    n = len(lengths)
    _, group_of = torch.unique(groups.cpu() if groups is not None else torch.arange(n), return_inverse=True)  # [N]
    num_groups = int(group_of.max()) + 1 if n else 0
    group_len = torch.zeros(num_groups, dtype=torch.long).scatter_reduce(0, group_of, lengths, reduce="amax")
    group_rows = torch.bincount(group_of, minlength=num_groups)  # [G']
    if prompt_lengths is None:
        _check_fits(lengths, group_len, group_rows, budget, whole_groups and groups is not None)
    cost = _padded_cost if prompt_lengths is None else _real_cost(lengths, prompt_lengths.long().cpu(), group_of, budget)
    units = _units(_order(lengths, group_of, group_len), group_of, group_rows, whole_groups)
    batches = _fill(units, lengths.tolist(), budget, cost, check_units=prompt_lengths is not None)
    _split_to(batches, min_batches)
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


def _fill(units: list[list[int]], lens: list[int], budget: int, cost, check_units: bool) -> list[list[list[int]]]:
    """Micro-batches of units in order, each as full as `budget` allows."""
    batches, current = [], []
    for unit in units:
        if check_units and cost([unit], lens) > budget:  # a whole group alone
            raise ValueError(f"ppo.max_tokens_per_micro_batch={budget} is smaller than a group of {len(unit)} rollouts "
                             f"({cost([unit], lens)} tokens as the forward computes them), and whole groups must share a "
                             f"micro-batch; raise it to at least {cost([unit], lens)}")
        if current and cost(current + [unit], lens) > budget:
            batches.append(current)
            current = []
        current.append(unit)
    return batches + [current] if current else batches


def _split_to(batches: list[list[list[int]]], min_batches: int) -> None:
    """At least `min_batches` (same count on every rank): halve the batch with the most units, in place."""
    while len(batches) < min_batches:
        k = max(range(len(batches)), key=lambda b: len(batches[b]))
        if len(batches[k]) < 2:
            raise ValueError(f"cannot make {min_batches} micro-batches out of {len(batches)} units")
        half = len(batches[k]) // 2
        batches[k : k + 1] = [batches[k][:half], batches[k][half:]]


def _padded_cost(units: list[list[int]], lens: list[int]) -> int:
    rows = [j for unit in units for j in unit]
    return len(rows) * max(lens[j] for j in rows)


def _real_cost(lengths: torch.Tensor, prompt_lengths: torch.Tensor, group_of: torch.Tensor, budget: int):
    """Real tokens of a micro-batch: each group's prompt once, every response; checks each rollout fits."""
    prompts, groups = prompt_lengths.tolist(), group_of.tolist()
    if len(lengths) and int(lengths.max()) > budget:
        raise ValueError(f"ppo.max_tokens_per_micro_batch={budget} is smaller than a rollout of {int(lengths.max())} "
                         f"tokens (prompt + response); raise it to at least {int(lengths.max())}")

    def cost(units: list[list[int]], lens: list[int]) -> int:
        rows = [j for unit in units for j in unit]
        distinct = {groups[j]: prompts[j] for j in rows}
        return sum(distinct.values()) + sum(lens[j] - prompts[j] for j in rows)

    return cost


def _check_fits(lengths: torch.Tensor, group_len: torch.Tensor, group_rows: torch.Tensor, budget: int,
                whole_groups: bool) -> None:
    if whole_groups:
        cost = group_rows * group_len  # [G'] padded tokens of each group alone
        if (cost > budget).any():
            g = int(cost.argmax())
            raise ValueError(
                f"ppo.max_tokens_per_micro_batch={budget} is smaller than a group of {int(group_rows[g])} rollouts "
                f"up to {int(group_len[g])} tokens ({int(cost[g])} padded tokens), and whole groups must share a "
                f"micro-batch; raise it to at least {int(cost[g])}")
    elif len(lengths) and int(lengths.max()) > budget:
        raise ValueError(f"ppo.max_tokens_per_micro_batch={budget} is smaller than a rollout of {int(lengths.max())} "
                         f"tokens (prompt + response); raise it to at least {int(lengths.max())}")
