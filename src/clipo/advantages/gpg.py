"""`advantage=gpg`: the group baseline, scaled up by the share of the batch with a nonzero reward (GPG)."""

from __future__ import annotations

import torch

from clipo.advantages.base import group_stats_per_rollout
from clipo.distributed import sum_over_ranks
from clipo.registry import ADVANTAGES


def gpg_advantages(rewards: torch.Tensor, groups: torch.Tensor, f_norm: float = 1.0) -> torch.Tensor:
    """GPG (Chu et al. 2025, https://arxiv.org/abs/2504.02546): `alpha * (r - group mean) / f_norm`,
    `alpha = N / max(number of rollouts with a nonzero reward, 1)` over the global batch, which makes
    up for the groups that carry no gradient; as verl's `gpg` estimator (pair it with `algorithm=gpg`).

    Args:
        rewards: [N] scalar reward per rollout.
        groups: [N] integer group id per rollout.
        f_norm: a constant divisor (verl's default 1).

    Returns:
        [N] float32 advantages (0 for groups of size 1 and of equal rewards).
    """
    centered, _, _ = group_stats_per_rollout(rewards, groups)
    counts = torch.stack([rewards.new_tensor(float(len(rewards))), (rewards != 0).sum().to(rewards.dtype)])
    n, nonzero = sum_over_ranks(counts.double())
    alpha = (n / nonzero.clamp(min=1)).float()
    return alpha * centered / f_norm


@ADVANTAGES.register("gpg")
class GPGAdvantage:
    """`advantage=gpg`: see `gpg_advantages`."""

    def __init__(self, f_norm: float = 1.0) -> None:
        if f_norm <= 0:
            raise ValueError(f"advantage=gpg: f_norm must be > 0, got {f_norm}")
        self.f_norm = f_norm

    def __call__(self, rewards: torch.Tensor, groups: torch.Tensor, lengths=None, components=None,  # noqa: ANN001
                 component_weights=None) -> torch.Tensor:
        return gpg_advantages(rewards, groups, self.f_norm)
