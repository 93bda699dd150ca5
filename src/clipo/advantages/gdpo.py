"""`advantage=gdpo`: each reward component normalised in its group, then summed with weights and whitened."""

from __future__ import annotations

import torch

from clipo.advantages.base import check_whiten_over, need_lengths, whiten
from clipo.advantages.grpo import grpo_advantages
from clipo.groups import group_stats
from clipo.registry import ADVANTAGES


def gdpo_advantages(components: torch.Tensor, component_weights: torch.Tensor, groups: torch.Tensor,
                    eps: float = 1e-6, whiten_over: str = "tokens", lengths: torch.Tensor | None = None,
                    whiten_eps: float = 1e-8) -> torch.Tensor:
    """GDPO (arXiv 2601.05242), verl's `gdpo`: `whiten(sum_k w_k grpo(r_k))`: each component (one reward
    function's score, or the shaping added on top) gets GRPO's group normalisation, so a component with
    a large scale cannot drown the others, then the weighted sum is whitened over the batch (over tokens
    as verl, or over rollouts; TRL's `multi_objective_aggregation="normalize_then_sum"` is the rollout
    form with its own epsilons). Rollouts in groups of size 1, and groups where every component is
    equal, stay exactly 0 and (size 1) out of the statistics.

    Args:
        components: [N, F] unweighted component scores (NaN counts as 0, as in the summed reward).
        component_weights: [F] their weights (`reward_weights`; 1 for the shaping).
        groups: [N] integer group ids.
        lengths: [N] response tokens, for `whiten_over="tokens"`.

    Returns:
        [N] float32 advantages.
    """
    check_whiten_over("gdpo", whiten_over)
    values = torch.nan_to_num(components.float(), nan=0.0)
    summed = torch.zeros(len(groups), device=values.device)
    equal = torch.ones(len(groups), dtype=torch.bool, device=values.device)
    for k in range(values.shape[-1]):
        summed = summed + component_weights[k].float() * grpo_advantages(values[:, k], groups, eps)
        stats = group_stats(values[:, k], groups)
        equal = equal & stats.per_rollout(stats.zero_variance)
    counted = stats.per_rollout(stats.counts) > 1
    weights = need_lengths("gdpo with whiten_over=tokens", lengths).float() if whiten_over == "tokens" else \
        torch.ones_like(summed)
    whitened = whiten(summed, torch.where(counted, weights, 0.0), whiten_eps)
    return torch.where(counted & ~equal, whitened, 0.0)


@ADVANTAGES.register("gdpo")
class GDPOAdvantage:
    """`advantage=gdpo`: see `gdpo_advantages`. Called without components (a run with one reward function
    and no shaping has one), the reward is the only component."""

    def __init__(self, eps: float = 1e-6, whiten_over: str = "tokens") -> None:
        check_whiten_over("gdpo", whiten_over)
        self.eps, self.whiten_over = eps, whiten_over

    def __call__(self, rewards: torch.Tensor, groups: torch.Tensor, lengths: torch.Tensor | None = None,
                 components: torch.Tensor | None = None, component_weights: torch.Tensor | None = None) -> torch.Tensor:
        if components is None:
            components, component_weights = rewards.float().unsqueeze(-1), rewards.new_ones(1, dtype=torch.float32)
        return gdpo_advantages(components, component_weights, groups, self.eps, self.whiten_over, lengths)
