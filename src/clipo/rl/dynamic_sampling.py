"""DAPO's sampling-side tricks (`sampling=`): dynamic sampling and soft overlong punishment.

Yu et al. 2025, "DAPO: An Open-Source LLM Reinforcement Learning System at Scale",
https://arxiv.org/abs/2503.14476 (Sec. 3.2 dynamic sampling, Sec. 3.4 overlong reward shaping).
Shapes: `N` rollouts, each with a scalar reward and an integer group (prompt) id.

Dynamic sampling, as `DynamicSampling.fill` runs it on the signal `sampling.filter_on` names
(`accuracy`: the verifier's correctness, DAPO's and verl's default; `reward`: the reward
functions' weighted sum), before any shaping:

    rollouts, refills = sample(), 0
    while (selection := select_groups(signal(rollouts), rollouts.groups, target, refills, limit)).need_more:
        rollouts, refills = concat(rollouts, sample()), refills + 1
    rollouts = rollouts[selection.keep]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from clipo.groups import group_stats
from clipo.rl.rewards import RewardScores, concat_scores
from clipo.rollout.batch import RolloutBatch, concat_rollouts

FILTER_SIGNALS = ("accuracy", "reward")


@dataclass(frozen=True)
class GroupSelection:
    """Outcome of `select_groups`.

    Attributes:
        keep: [N] bool, the rollouts of the selected groups.
        num_groups: groups selected.
        num_informative: selected groups with reward variance > 0.
        enough: `num_informative == target` (only groups with variance were selected).
        limit_hit: not enough and the refill limit is spent: the selection was topped up with
            zero-variance groups (in order of first appearance) to keep the batch size when possible.
    """

    keep: torch.Tensor
    num_groups: int
    num_informative: int
    enough: bool
    limit_hit: bool

    @property
    def need_more(self) -> bool:
        """Sample another batch and call `select_groups` again with `refills + 1`."""
        return not self.enough and not self.limit_hit


def select_groups(
    rewards: torch.Tensor, groups: torch.Tensor, target_groups: int, refills: int, max_refills: int
) -> GroupSelection:
    """Pick up to `target_groups` groups with reward variance > 0 from the rollouts gathered so far.

    Groups are taken in order of their first rollout, so earlier batches are used first and the
    choice is deterministic. Zero-variance groups are returned only once the limit is hit
    (`refills >= max_refills` without enough informative groups).

    Args:
        rewards: [N] verifier reward per rollout, over all batches sampled so far.
        groups: [N] integer group id per rollout (ids unique across batches).
        target_groups: groups wanted for the training batch (prompts per step).
        refills: extra batches sampled so far (0 after the first batch).
        max_refills: extra batches allowed (`sampling.max_refill_batches`).
    """
    if target_groups < 1 or refills < 0 or max_refills < 0:
        got = f"{target_groups}, {refills}, {max_refills}"
        raise ValueError(f"need target_groups >= 1 and refills, max_refills >= 0, got {got}")
    stats = group_stats(rewards, groups)
    varied, index, num_groups = ~stats.zero_variance, stats.index, stats.num_groups
    order = torch.argsort(stats.first)  # groups in order of appearance
    varied_in_order = varied[order]
    chosen = varied_in_order & (varied_in_order.cumsum(0) <= target_groups)
    num_informative = int(chosen.sum())
    enough = num_informative >= target_groups
    limit_hit = not enough and refills >= max_refills
    if limit_hit:  # top up with zero-variance groups so the batch keeps its size
        flat = ~varied_in_order
        chosen = chosen | (flat & (flat.cumsum(0) <= target_groups - num_informative))
    keep_group = torch.zeros(num_groups, dtype=torch.bool, device=index.device)
    keep_group[order] = chosen
    return GroupSelection(keep_group[index], int(chosen.sum()), num_informative, enough, limit_hit)


def overlong_penalty(lengths: torch.Tensor, max_len: int, buffer: int, penalty: float = 1.0) -> torch.Tensor:
    """DAPO's soft overlong punishment (Sec. 3.4, R_length scaled by `penalty`), added to the reward.

    0 for `length <= max_len - buffer`, then linear down to `-penalty` at `max_len`, and
    `-penalty` beyond. `buffer = 0` disables it (all zeros).

    Args:
        lengths: [N] response lengths in tokens.
        max_len: the generation budget (max new tokens).
        buffer: the soft-punishment interval length (DAPO: 4096 of 20480).
        penalty: the punishment at `max_len` (DAPO: 1.0).

    Returns:
        [N] float32 penalties in [-penalty, 0].
    """
    if max_len < 1 or not 0 <= buffer <= max_len or penalty < 0:
        raise ValueError(f"need max_len >= 1, 0 <= buffer <= max_len, penalty >= 0; got {max_len}, {buffer}, {penalty}")
    if buffer == 0:
        return torch.zeros(lengths.shape, dtype=torch.float32, device=lengths.device)
    excess = (lengths.float() - (max_len - buffer)).clamp(min=0)
    return -penalty * (excess / buffer).clamp(max=1.0)


@dataclass(frozen=True)
class DynamicSampling:
    """`sampling.dynamic`: keep only groups whose `filter_on` signal varies, refilling from further prompts.

    Attributes:
        pad_token_id: to re-pad batches joined by a refill.
        max_refill_batches: extra generation rounds a step may take before it gives up and
            tops the batch up with zero-variance groups (verl's default 10).
        filter_on: `accuracy` (the verifier's correctness) or `reward` (the summed reward).
    """

    pad_token_id: int
    max_refill_batches: int = 10
    filter_on: str = "accuracy"

    def __post_init__(self) -> None:
        if self.max_refill_batches < 0:
            raise ValueError(f"sampling.max_refill_batches={self.max_refill_batches} must be >= 0")
        if self.filter_on not in FILTER_SIGNALS:
            raise ValueError(f"sampling.filter_on={self.filter_on!r}: choose one of {FILTER_SIGNALS}")

    def signal(self, scores: RewardScores) -> torch.Tensor:
        """[N] what a group must vary in to be kept."""
        return scores.correct.float() if self.filter_on == "accuracy" else scores.total

    def fill(
        self, rollouts: RolloutBatch, scores: RewardScores, target: int,
        sample_more: Callable[[], tuple[RolloutBatch, RewardScores]],
    ) -> tuple[RolloutBatch, RewardScores, dict[str, torch.Tensor]]:
        """`target` groups with variance from `rollouts` and as many refills (`sample_more`) as needed."""
        refills, limit = 0, self.max_refill_batches
        selection = select_groups(self.signal(scores), rollouts.groups.cpu(), target, refills, limit)
        while selection.need_more:
            more_rollouts, more_scores = sample_more()
            rollouts = concat_rollouts([rollouts, more_rollouts], self.pad_token_id)
            scores = concat_scores([scores, more_scores])
            refills += 1
            selection = select_groups(self.signal(scores), rollouts.groups.cpu(), target, refills, limit)
        keep = selection.keep.nonzero().squeeze(-1)  # on the CPU, as the scores are
        metrics = {
            "dapo/refills": torch.tensor(float(refills)),
            "dapo/limit_hit": torch.tensor(float(selection.limit_hit)),
            "dapo/informative_group_frac": torch.tensor(selection.num_informative / target),
        }
        return rollouts.select(keep.to(rollouts.sequences.device)), scores.select(keep), metrics


@dataclass(frozen=True)
class OverlongShaping:
    """`sampling.overlong_buffer > 0`: DAPO's soft overlong punishment added to the rewards.

    Attributes:
        max_len: the generation budget (rollout.max_new_tokens).
        buffer: tokens before `max_len` where the penalty starts (the paper: 4096 of 20480).
        penalty: the punishment at `max_len` (the paper: 1.0).
    """

    max_len: int
    buffer: int
    penalty: float = 1.0

    def __post_init__(self) -> None:
        problems = []
        if not 0 < self.buffer <= self.max_len:  # 0 builds no shaping at all
            problems.append(f"sampling.overlong_buffer={self.buffer} must lie in 0..rollout.max_new_tokens="
                            f"{self.max_len} (0 disables it)")
        if self.penalty < 0:
            problems.append(f"sampling.overlong_penalty={self.penalty} must be >= 0")
        if problems:
            raise ValueError("; ".join(problems))

    def __call__(self, lengths: torch.Tensor) -> torch.Tensor:
        """[N] penalties (<= 0) for response lengths [N]."""
        return overlong_penalty(lengths, self.max_len, self.buffer, self.penalty)
