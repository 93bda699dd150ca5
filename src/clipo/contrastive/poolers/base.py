"""The base of the poolers (the `pooler=` config group, one file per option): response-token
hidden states -> one vector per rollout.

Shapes: `N` rollouts, `T` response tokens, `D` hidden size. Every pooler maps
hidden [N, T, D] (any float dtype) and mask [N, T] (True on the rows to pool, False elsewhere,
wherever it sits) to pooled [N, D] in float32, over masked rows only. A row whose mask is
empty pools to zeros, never NaN.

In training the mask is `RolloutBatch.hidden_mask`: row t of the rollout hidden states is the
state at response token t, and the rows pooled are tokens 0..L-2 of a length-L rollout (the
official code's positions; the last token has no state, a length-1 rollout pools to zeros).

Which hidden layer is pooled is not the pooler's choice: `rollout.hidden_layer` tells the
rollout engine (and the training forward in loss mode) which layer to return.
"""

from __future__ import annotations

import torch
from torch import nn


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
