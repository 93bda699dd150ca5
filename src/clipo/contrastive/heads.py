"""Projection heads (the `head=` config group): pooled hidden state -> unit embedding.

Shapes: `N` rollouts, `D` hidden size (`in_dim`), `E` embedding size (`dim`).
Every head maps h [N, D] (any float dtype) to z = normalize(head(h)) [N, E] in float32,
whatever dtype its own weights were cast to (e.g. by a bf16-true Lightning precision).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clipo.registry import HEADS


def _check_dims(in_dim: int, dim: int) -> None:
    if in_dim <= 0 or dim <= 0:
        raise ValueError(f"head dimensions must be positive, got in_dim={in_dim}, dim={dim}")


def _linear_f32(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """`layer(x)` computed in float32."""
    bias = None if layer.bias is None else layer.bias.float()
    return F.linear(x.float(), layer.weight.float(), bias)


@HEADS.register("linear")
class LinearHead(nn.Module):
    """One bias-free Linear D -> E (the paper's head).

    Args:
        in_dim: hidden size D of the pooled representation.
        dim: embedding size E (512 in the paper's Track I, 2048 in Track II).
    """

    def __init__(self, in_dim: int, dim: int = 512) -> None:
        super().__init__()
        _check_dims(in_dim, dim)
        self.proj = nn.Linear(in_dim, dim, bias=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.normalize(_linear_f32(hidden, self.proj), dim=-1)


@HEADS.register("mlp")
class MLPHead(nn.Module):
    """Linear-ReLU-Linear without biases (the SimCLR projection head, as the official code's
    `Linear(D, D, bias=False)-ReLU-Linear(D, E, bias=False)`).

    Bias-free, the head is positively homogeneous: scaling h scales head(h), so the unit
    embedding does not depend on the pooled vector's norm (nor on dividing a sum by L or L-1).

    Args:
        in_dim: hidden size D.
        dim: embedding size E.
        hidden_dim: width of the middle layer; defaults to `in_dim`.
    """

    def __init__(self, in_dim: int, dim: int = 512, hidden_dim: int | None = None) -> None:
        super().__init__()
        hidden_dim = in_dim if hidden_dim is None else hidden_dim
        _check_dims(in_dim, dim)
        _check_dims(in_dim, hidden_dim)
        self.fc1 = nn.Linear(in_dim, hidden_dim, bias=False)
        self.fc2 = nn.Linear(hidden_dim, dim, bias=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.normalize(_linear_f32(torch.relu(_linear_f32(hidden, self.fc1)), self.fc2), dim=-1)


@HEADS.register("fixed")
class FixedRandomHead(nn.Module):
    """A frozen random projection D -> E, for the ablation that trains no head.

    The matrix is a buffer, not a parameter: it is saved with the model but no optimizer sees it.
    Entries are N(0, 1/D), drawn from `seed`, so the same seed gives the same head on every rank.

    Args:
        in_dim: hidden size D.
        dim: embedding size E.
        seed: seed of the projection.
    """

    def __init__(self, in_dim: int, dim: int = 512, seed: int = 0) -> None:
        super().__init__()
        _check_dims(in_dim, dim)
        generator = torch.Generator().manual_seed(seed)
        weight = torch.randn(dim, in_dim, generator=generator) / in_dim**0.5
        self.register_buffer("weight", weight)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.normalize(F.linear(hidden.float(), self.weight.float()), dim=-1)
