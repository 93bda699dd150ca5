"""Micro-batches by token budget (verl's `use_dynamic_bsz` / `ppo_max_token_len_per_gpu`).

Rollouts of similar length go together, so the padding of each forward pass stays small,
and each micro-batch holds as many rollouts as fit in `budget` padded tokens: rows x the
longest rollout (prompt + response tokens) in it. The step normaliser is computed over the
whole mini-batch, so gradient accumulation over any such partition gives the full-batch
gradient.

Shapes: `N` rollouts of one mini-batch.
"""

from __future__ import annotations

import torch


def pack_by_tokens(lengths: torch.Tensor, budget: int, groups: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Split rollouts into micro-batches of at most `budget` padded tokens, longest first.

    Args:
        lengths: [N] tokens of each rollout (prompt + response).
        budget: the most padded tokens (rows x longest length) a micro-batch may hold.
        groups: [N] group ids; when given, a group's rollouts stay in one micro-batch (whole
            groups are packed, e.g. for the contrastive loss taken per forward pass).

    Returns:
        Index tensors (ascending within each) that partition `range(N)`; micro-batches are
        ordered from the longest rollouts to the shortest.

    Raises:
        ValueError: a rollout (or a whole group) alone exceeds the budget.
    """
    lengths = lengths.long()
    units = torch.arange(len(lengths), device=lengths.device) if groups is None else groups
    _, unit_of = torch.unique(units, return_inverse=True)  # [N] in 0..U-1
    num_units = int(unit_of.max()) + 1 if len(lengths) else 0
    unit_len = torch.zeros(num_units, dtype=torch.long, device=lengths.device).scatter_reduce(
        0, unit_of, lengths, reduce="amax")  # [U] longest rollout of each unit
    unit_rows = torch.bincount(unit_of, minlength=num_units)  # [U]
    too_big = unit_rows * unit_len > budget
    if too_big.any():
        u = int(too_big.nonzero()[0])
        what = f"a rollout of {int(unit_len[u])} tokens" if groups is None else (
            f"a group of {int(unit_rows[u])} rollouts up to {int(unit_len[u])} tokens "
            f"({int(unit_rows[u] * unit_len[u])} padded tokens)")
        raise ValueError(f"ppo.max_tokens_per_micro_batch={budget} is smaller than {what}; raise it to at least "
                         f"{int((unit_rows * unit_len).max())}")
    order = torch.sort(unit_len, descending=True, stable=True).indices.tolist()
    batches, current, rows, longest = [], [], 0, 0
    for u in order:  # a loop over units (rollouts or groups), never over tokens
        size, length = int(unit_rows[u]), int(unit_len[u])
        if current and (rows + size) * max(longest, length) > budget:
            batches.append(current)
            current, rows, longest = [], 0, 0
        current.append(u)
        rows, longest = rows + size, max(longest, length)
    if current:
        batches.append(current)
    return [torch.isin(unit_of, torch.tensor(b, device=lengths.device)).nonzero().squeeze(-1) for b in batches]
