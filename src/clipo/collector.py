"""The first half of an RL step: prompts -> one scored, shaped batch with advantages.

    engine.generate -> verifier rewards -> [dynamic sampling: drop zero-variance groups, refill]
    -> [overlong shaping] -> [CLIPO reward shaping] -> advantage estimator -> CollectedBatch

Each bracketed stage is an optional part, present or None as the builders decided from the
config; nothing here reads the config or asks a part what it is. Shapes: `N` rollouts.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Callable

import torch

from clipo.contrastive.steps import ContrastiveRewardShaping
from clipo.dapo import DynamicSampling, OverlongShaping, select_groups
from clipo.groups import group_stats
from clipo.interfaces import AdvantageEstimator, RolloutEngine, Verifier
from clipo.rollout.batch import RolloutBatch, concat_rollouts
from clipo.rollout.sampling import Sampling
from clipo.timing import PhaseTimer


@dataclass
class CollectedBatch:
    """What the updater consumes: the rollouts and everything derived from their scores."""

    rollouts: RolloutBatch
    rewards: torch.Tensor  # [N] the verifier's rewards
    correct: torch.Tensor  # [N] bool, rewards > 0.5 (the contrastive labels)
    shaped_rewards: torch.Tensor  # [N] rewards after overlong and CLIPO shaping (what advantages see)
    advantages: torch.Tensor  # [N] float32
    update_policy: bool = True  # False during CLIPO's head warm-up
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)  # detached scalars


class RolloutCollector:
    """Generates, scores, filters and shapes one step's rollouts.

    Args:
        engine: the rollout engine (`rollout.engine`).
        verifier: the training reward.
        advantage: the advantage estimator.
        sampling: the engine's sampling settings for training rollouts.
        group_size: rollouts per prompt.
        pad_token_id: to re-pad batches joined by a refill.
        capture_layer: hidden layer the engine returns (only when reward shaping pools it).
        dynamic_sampling: DAPO's drop-and-refill (`sampling.dynamic`), or None.
        overlong: DAPO's soft overlong punishment (`sampling.overlong_buffer > 0`), or None.
        reward_shaping: CLIPO's bonus in reward mode, or None.
    """

    def __init__(
        self,
        engine: RolloutEngine,
        verifier: Verifier,
        advantage: AdvantageEstimator,
        sampling: Sampling,
        group_size: int,
        pad_token_id: int,
        capture_layer: int | None = None,
        dynamic_sampling: DynamicSampling | None = None,
        overlong: OverlongShaping | None = None,
        reward_shaping: ContrastiveRewardShaping | None = None,
    ) -> None:
        self.engine, self.verifier, self.advantage = engine, verifier, advantage
        self.sampling, self.group_size, self.pad_token_id = sampling, group_size, pad_token_id
        self.capture_layer = capture_layer
        self.dynamic_sampling, self.overlong, self.reward_shaping = dynamic_sampling, overlong, reward_shaping

    def sync_weights(self, policy: torch.nn.Module) -> None:
        """After a policy update: the engine samples the next step from the new weights."""
        self.engine.sync_weights(policy)

    def collect(
        self,
        records: list[dict],
        step: int,
        refill: Callable[[], list[dict]],
        timer: PhaseTimer,
        generation_context: Callable[[], AbstractContextManager] = nullcontext,
    ) -> CollectedBatch:
        """One step's batch from the prompt `records`.

        Args:
            records: this process's prompts of the step.
            step: RL steps done so far (for CLIPO's head warm-up).
            refill: draws more prompts (dynamic sampling's refills).
            timer: phase timings and generated tokens are added to it.
            generation_context: entered around each generation (e.g. ZeRO-3's weight gathering).
        """
        rollouts, rewards = self._generate_and_score(records, timer, generation_context)
        metrics = self._rollout_metrics(rollouts, rewards)
        if self.dynamic_sampling is not None:
            rollouts, rewards, dapo_metrics = self._keep_informative_groups(
                rollouts, rewards, len(records), refill, timer, generation_context
            )
            metrics |= dapo_metrics
        correct = rewards > 0.5
        shaped = rewards if self.overlong is None else rewards + self.overlong(rollouts.response_lengths)
        update_policy = True
        if self.reward_shaping is not None:
            with timer("contrastive"):
                shaped, contrastive_metrics = self.reward_shaping(
                    rollouts.hidden, rollouts.response_mask, correct, rollouts.groups, shaped
                )
            metrics |= contrastive_metrics
            update_policy = not self.reward_shaping.policy_waits(step)
        advantages = self.advantage(shaped, rollouts.groups)
        metrics["train/shaped_reward"] = shaped.mean()
        return CollectedBatch(rollouts, rewards, correct, shaped, advantages, update_policy, metrics)

    def _generate_and_score(
        self, records: list[dict], timer: PhaseTimer, generation_context: Callable[[], AbstractContextManager]
    ) -> tuple[RolloutBatch, torch.Tensor]:
        with timer("generate"), generation_context():
            rollouts = self.engine.generate(records, self.group_size, self.sampling, self.capture_layer)
        with timer("verify"):
            scores = self.verifier(rollouts.responses, rollouts.ground_truths)
            rewards = torch.tensor(scores, device=rollouts.sequences.device)
        timer.generated_tokens += int(rollouts.response_lengths.sum())
        return rollouts, rewards

    def _keep_informative_groups(
        self,
        rollouts: RolloutBatch,
        rewards: torch.Tensor,
        target: int,
        refill: Callable[[], list[dict]],
        timer: PhaseTimer,
        generation_context: Callable[[], AbstractContextManager],
    ) -> tuple[RolloutBatch, torch.Tensor, dict[str, torch.Tensor]]:
        """DAPO dynamic sampling: drop groups whose rewards do not vary, refill from further prompts."""
        limit = self.dynamic_sampling.max_refill_batches
        refills = 0
        selection = select_groups(rewards, rollouts.groups, target, refills, limit)
        while selection.need_more:
            more_rollouts, more_rewards = self._generate_and_score(refill(), timer, generation_context)
            rollouts = concat_rollouts([rollouts, more_rollouts], self.pad_token_id)
            rewards = torch.cat([rewards, more_rewards])
            refills += 1
            selection = select_groups(rewards, rollouts.groups, target, refills, limit)
        keep = selection.keep.nonzero().squeeze(-1)
        metrics = {
            "dapo/refills": torch.tensor(float(refills)),
            "dapo/limit_hit": torch.tensor(float(selection.limit_hit)),
            "dapo/informative_group_frac": torch.tensor(selection.num_informative / target),
        }
        return rollouts.select(keep), rewards[keep], metrics

    def _rollout_metrics(self, rollouts: RolloutBatch, rewards: torch.Tensor) -> dict[str, torch.Tensor]:
        stats = self.verifier.stats()
        return {
            "train/reward": rewards.mean(),
            "train/acc": (rewards > 0.5).float().mean(),
            # groups of the first sampled batch without reward variance (before any filtering)
            "train/zero_var_group_frac": group_stats(rewards, rollouts.groups).zero_variance_fraction,
            "train/response_len": rollouts.response_lengths.float().mean(),
            "train/truncation_rate": rollouts.truncated.float().mean(),
            **{f"verifier/{k}": torch.tensor(float(v)) for k, v in stats.items()},
        }
