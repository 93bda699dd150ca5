"""Random inputs shared by the reference comparisons: uneven masks, groups with equal rewards, several seeds.

Shapes: `N` rollouts in `N / G` groups of `G`, `T` response tokens.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

N, G, T = 16, 4, 7


class PolicyBatch(NamedTuple):
    logprobs: torch.Tensor  # [N, T] current (a leaf; clone per use)
    old: torch.Tensor  # [N, T] pi_old
    ref: torch.Tensor  # [N, T] reference
    sampling: torch.Tensor  # [N, T] the sampler's
    entropy: torch.Tensor  # [N, T] >= 0
    mask: torch.Tensor  # [N, T] bool, 1..T tokens per row
    rewards: torch.Tensor  # [N] binary; group 0 all correct, group 1 all wrong, groups 2, 3 mixed
    groups: torch.Tensor  # [N]
    advantages: torch.Tensor  # [N] GRPO advantages of `rewards` (0 in the equal groups)


def policy_batch(seed: int, drift: float = 0.3, probabilities: bool = False) -> PolicyBatch:
    """Log-probs with pi / pi_old spread around 1 by `drift`; `probabilities`: log-probs of p in (0.05, 0.95)
    (for the losses that look at the token's probability, DPPO)."""
    gen = torch.Generator().manual_seed(seed)
    if probabilities:
        old = torch.empty(N, T).uniform_(0.05, 0.95, generator=gen).log()
    else:
        old = torch.randn(N, T, generator=gen) - 1.5
    logprobs = (old + drift * torch.randn(N, T, generator=gen)).clamp(max=-1e-3)
    ref = logprobs + 0.3 * torch.randn(N, T, generator=gen)
    sampling = old + 0.2 * torch.randn(N, T, generator=gen)
    entropy = torch.rand(N, T, generator=gen) * 3
    lengths = torch.randint(1, T + 1, (N,), generator=gen)
    mask = torch.arange(T) < lengths.unsqueeze(-1)
    rewards = (torch.rand(N, generator=gen) < 0.5).float()
    rewards[:G], rewards[G : 2 * G] = 1.0, 0.0  # an all-correct and an all-wrong group
    rewards[2 * G :: G], rewards[2 * G + 1 :: G] = 1.0, 0.0  # the others mixed
    groups = torch.arange(N) // G
    from clipo.advantages import grpo_advantages

    return PolicyBatch(logprobs, old, ref, sampling, entropy, mask, rewards, groups, grpo_advantages(rewards, groups))


def leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_()
