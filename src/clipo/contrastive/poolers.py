"""Poolers (the `pooler=` config group): response-token hidden states -> one vector per rollout.

Shapes: `N` rollouts, `T` response tokens, `D` hidden size. Every pooler maps
hidden [N, T, D] (any float dtype) and mask [N, T] (True on response tokens, False on padding,
wherever it sits) to pooled [N, D] in float32, over masked tokens only. A row whose mask is
empty pools to zeros, never NaN.

Which hidden layer is pooled is not the pooler's choice: `rollout.capture_layer` tells the
rollout engine (and the training forward in loss mode) which layer to return.
"""

from __future__ import annotations

import torch
from torch import nn

from clipo.ops import masked_mean
from clipo.registry import POOLERS


class Pooler(nn.Module):
    """Base: stores the hidden size, checks shapes."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        if hidden_size <= 0:
            raise ValueError(f"hidden_size must be positive, got {hidden_size}")
        self.hidden_size = int(hidden_size)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if hidden.dim() != 3 or mask.shape != hidden.shape[:2]:
            raise ValueError(
                f"expected hidden [N, T, D] and mask [N, T], got {tuple(hidden.shape)} and {tuple(mask.shape)}"
            )
        return self.pool(hidden.float(), mask.bool())

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"hidden_size={self.hidden_size}"


@POOLERS.register("mean")
class MeanPooler(Pooler):
    """Mean over response tokens (the paper's)."""

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return masked_mean(hidden, mask[..., None], dim=1)


@POOLERS.register("last")
class LastTokenPooler(Pooler):
    """The hidden state at the last True position of each row."""

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(mask.shape[1], device=mask.device)  # [T]
        last = (positions * mask).argmax(dim=1)  # [N]; 0 on an empty row, zeroed below
        picked = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # [N, D]
        return picked * mask.any(dim=1, keepdim=True).float()


@POOLERS.register("max")
class MaxPooler(Pooler):
    """Element-wise max over response tokens."""

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        lowest = torch.finfo(hidden.dtype).min  # finite, so an empty row never makes inf/NaN
        pooled = hidden.masked_fill(~mask[..., None], lowest).amax(dim=1)
        return torch.where(mask.any(dim=1, keepdim=True), pooled, torch.zeros_like(pooled))


@POOLERS.register("attention")
class AttentionPooler(Pooler):
    """Softmax attention over response tokens with one learned query q [D].

    weights_t = softmax_t(h_t . q / sqrt(D)) over valid tokens; pooled = sum_t weights_t h_t.
    q starts at zero, so the pooler starts as mean pooling and learns from there.
    """

    def __init__(self, hidden_size: int) -> None:
        super().__init__(hidden_size)
        self.query = nn.Parameter(torch.zeros(hidden_size))

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = hidden @ self.query.float() / self.hidden_size**0.5  # [N, T]
        has_any = mask.any(dim=1, keepdim=True)  # [N, 1]
        # Empty rows attend uniformly to zeros instead of softmax over all -inf (NaN).
        scores = scores.masked_fill(~mask, float("-inf")).masked_fill(~has_any, 0.0)
        weights = torch.softmax(scores, dim=1) * has_any.float()  # [N, T]
        return torch.einsum("nt,ntd->nd", weights, hidden)
