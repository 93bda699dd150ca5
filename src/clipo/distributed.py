"""What changes when a run spans several processes (DDP, DeepSpeed ZeRO or FSDP data parallelism).

Every rank samples its own prompts, so all rollouts of a prompt stay on one rank; these helpers
make the per-rank pieces add up to what one process would compute on the global batch.
Outside `torch.distributed` (one process) each is the identity.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_gather_rows(tensor: torch.Tensor) -> tuple[torch.Tensor, slice]:
    """Concatenate every rank's rows [N_r, ...] in rank order, keeping the gradient on this rank's part.

    Ranks may hold different numbers of rows (DAPO keeps a variable number of groups): rows are
    padded to the largest count for the collective and trimmed after. The other ranks' rows are
    detached copies (the usual contrastive all-gather: each rank back-propagates its own anchors
    and candidates; gradient terms through another rank's embeddings stay on that rank).

    Returns:
        (rows [sum_r N_r, ...], the slice of this rank's rows in it).
    """
    rank, size = world()
    if size == 1:
        return tensor, slice(0, tensor.shape[0])
    count = torch.tensor([tensor.shape[0]], device=tensor.device)
    counts = [torch.empty_like(count) for _ in range(size)]
    dist.all_gather(counts, count)
    counts = [int(c) for c in counts]
    padded = tensor.detach().new_zeros((max(counts), *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor.detach()
    parts = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(parts, padded)
    parts = [part[:n] for part, n in zip(parts, counts)]
    parts[rank] = tensor  # the local rows keep their autograd graph
    start = sum(counts[:rank])
    return torch.cat(parts), slice(start, start + counts[rank])


def globally_unique_groups(groups: torch.Tensor) -> torch.Tensor:
    """Group ids [N] made distinct across ranks (rank r's id g becomes g * world + r), so that
    gathered rollouts of different ranks never share a prompt id by accident."""
    rank, size = world()
    return groups if size == 1 else groups * size + rank


def sum_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """Element-wise sum of `values` over ranks (a copy; the input is left as it is)."""
    total = values.clone()
    if world()[1] > 1:
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def max_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum of `values` over ranks (a copy)."""
    top = values.clone()
    if world()[1] > 1:
        dist.all_reduce(top, op=dist.ReduceOp.MAX)
    return top


def mean_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """Element-wise mean of `values` over ranks."""
    return sum_over_ranks(values) / world()[1]


def gathered_for_generation(kind: Any, strategy: Any, policy: torch.nn.Module) -> AbstractContextManager:
    """Gather the sharded weights once for a whole rollout phase instead of all-gathering every layer
    for every token (and, since ranks generate different numbers of tokens, instead of collectives
    that would not match across ranks).

    ZeRO-3: DeepSpeed's own `unwrap_model_for_generation` (it also lifts ZeRO's per-module fetch
    hooks meanwhile); FSDP2: the policy's FSDP modules unsharded (`clipo.run.strategies.full_parameters`);
    other strategy kinds (`clipo.run.facts.StrategyKind`) need nothing.
    """
    from clipo.run.facts import StrategyKind
    from clipo.run.strategies import full_parameters, zero3_generation

    if kind is StrategyKind.ZERO3:
        return zero3_generation(strategy.model)
    if kind is StrategyKind.FSDP:
        return full_parameters(policy, kind)
    return nullcontext()
