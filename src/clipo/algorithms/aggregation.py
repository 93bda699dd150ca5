"""Loss aggregation over tokens and sequences, normalised over the whole optimizer step.

Shapes: `N` rollouts, `T` response tokens, `mask[N, T]` true on response tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from clipo.groups import group_stats

AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")


@dataclass(frozen=True)
class StepNormalizer:
    """Counts over every rollout of one optimizer step, used as the aggregation denominators.

    Attributes:
        tokens: response tokens in the step (token-mean).
        sequences: rollouts with at least one response token in the step (the seq-mean modes).
        max_len: the constant length of seq-mean-token-sum-norm (Dr. GRPO's generation budget).
        mixed_groups: groups in the step with both a correct and an incorrect rollout (at least 1):
            the losses that contrast them (ConSPO) average over these.
    """

    tokens: float
    sequences: float
    max_len: int
    mixed_groups: float = 1.0

    def __post_init__(self) -> None:
        if self.tokens <= 0 or self.sequences <= 0 or self.max_len <= 0 or self.mixed_groups <= 0:
            raise ValueError(f"StepNormalizer counts must be positive, got {self}")

    @classmethod
    def from_mask(cls, mask: torch.Tensor | Sequence[torch.Tensor], max_len: int | None = None,
                  groups: torch.Tensor | None = None, correct: torch.Tensor | None = None) -> StepNormalizer:
        """Count the response masks [N, T] of the whole step (one tensor, or one per micro-batch).

        `max_len` defaults to the widest mask's T; pass the generation budget (max new tokens)
        for Dr. GRPO's exact constant. `groups` and `correct` (the step's [N] ids and labels) count
        `mixed_groups`; without them it is 1. An all-empty step counts as 1 token and 1 sequence (its
        loss is 0 either way). These are one process's counts; under data parallelism the
        LightningModule adds them over ranks instead (`ClipoModule._step_normalizer`).
        """
        masks = [mask] if isinstance(mask, torch.Tensor) else list(mask)
        if not masks or any(m.dim() != 2 for m in masks):
            raise ValueError("from_mask needs one or more [N, T] response masks")
        tokens = sum(int(m.bool().sum()) for m in masks)
        sequences = sum(int(m.bool().any(-1).sum()) for m in masks)
        width = max_len if max_len is not None else max(m.shape[-1] for m in masks)
        mixed = 1 if groups is None or correct is None else mixed_group_count(groups, correct)
        return cls(tokens=float(max(tokens, 1)), sequences=float(max(sequences, 1)), max_len=int(width),
                   mixed_groups=float(max(mixed, 1)))


def mixed_group_count(groups: torch.Tensor, correct: torch.Tensor) -> int:
    """Groups [N] ids with both a correct and an incorrect rollout among `correct` [N] bool."""
    if groups.numel() == 0:
        return 0
    return int((~group_stats(correct.float(), groups).zero_variance).sum())


def aggregate(loss_mat: torch.Tensor, mask: torch.Tensor, mode: str, norm: StepNormalizer) -> torch.Tensor:
    """Reduce per-token losses [N, T] of one micro-batch to its share of the step's scalar loss.

    - `token-mean`: sum of token losses / `norm.tokens`.
    - `seq-mean-token-mean`: sum over rollouts of their token mean / `norm.sequences`.
    - `seq-mean-token-sum`: sum over rollouts of their token sum / `norm.sequences`.
    - `seq-mean-token-sum-norm` (Dr. GRPO, arXiv 2503.20783): sum of token losses /
      (`norm.sequences` * `norm.max_len`).

    Each is linear in the micro-batch's rollouts, so summing over micro-batches gives the full batch.
    """
    mask = mask.bool()
    token_sums = torch.where(mask, loss_mat, 0.0).sum(-1)  # [N]
    if mode == "token-mean":
        return token_sums.sum() / norm.tokens
    if mode == "seq-mean-token-mean":
        return (token_sums / mask.sum(-1).clamp(min=1)).sum() / norm.sequences
    if mode == "seq-mean-token-sum":
        return token_sums.sum() / norm.sequences
    if mode == "seq-mean-token-sum-norm":
        return token_sums.sum() / (norm.sequences * norm.max_len)
    raise ValueError(f"unknown aggregation {mode!r}; choose one of: {', '.join(AGGREGATIONS)}")
