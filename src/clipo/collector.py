"""The first half of an RL step: prompts -> one scored, shaped batch with advantages.

    engine.generate -> rewards (verifier + reward_funcs) -> [dynamic sampling: drop zero-variance groups, refill]
    -> [training forward: hidden states and old log-probs the engine does not give; importance weights]
    -> [overlong shaping] -> [CLIPO reward shaping] -> advantage estimator -> CollectedBatch

Each bracketed stage is an optional part, present or None as the builders decided from the
config; nothing here reads the config or asks a part what it is. Shapes: `N` rollouts.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from clipo.algorithms.rollout_correction import truncated_importance_weights
from clipo.contrastive.steps import ContrastiveRewardShaping
from clipo.dapo import DynamicSampling, OverlongShaping, select_groups
from clipo.groups import group_stats
from clipo.interfaces import AdvantageEstimator, RolloutEngine, Verifier
from clipo.rewards import RewardScorer, RewardScores, concat_scores, reward_metrics
from clipo.rollout.batch import RolloutBatch, concat_rollouts
from clipo.rollout.completion import TrainingForwardCompletion, needs_training_forward
from clipo.rollout.sampling import Sampling
from clipo.timing import PhaseTimer


@dataclass
class CollectedBatch:
    """What the updater consumes: the rollouts and everything derived from their scores."""

    rollouts: RolloutBatch
    rewards: torch.Tensor  # [N] the reward functions' weighted sum (the verifier alone by default)
    correct: torch.Tensor  # [N] bool, the verifier's score > 0.5 (the contrastive labels), never the sum's
    shaped_rewards: torch.Tensor  # [N] rewards after overlong and CLIPO shaping (what advantages see)
    advantages: torch.Tensor  # [N] float32
    update_policy: bool = True  # False during CLIPO's head warm-up
    old_logprobs: torch.Tensor | None = None  # [N, T] the trainer's, when the training forward ran
    importance_weights: torch.Tensor | None = None  # [N, T] truncated importance weights (engine vs trainer)
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)  # detached scalars
    scores: RewardScores | None = None  # each reward function's scores [N, F], for the rollout log
    contrastive_loss: torch.Tensor | None = None  # [N] CLIPO's L_i in reward mode
    bonus: torch.Tensor | None = None  # [N] CLIPO's reward bonus in reward mode


class RolloutCollector:
    """Generates, scores, filters and shapes one step's rollouts.

    Args:
        engine: the rollout engine (`rollout.engine`).
        verifier: the training verifier (its correctness labels the contrastive sets).
        rewards: the verifier and the run's own reward functions, summed with weights (`reward_funcs`).
        advantage: the advantage estimator.
        sampling: the engine's sampling settings for training rollouts.
        group_size: rollouts per prompt.
        pad_token_id: to re-pad batches joined by a refill.
        capture_layer: hidden layer the engine returns (only when reward shaping pools it).
        dynamic_sampling: DAPO's drop-and-refill (`sampling.dynamic`), or None.
        overlong: DAPO's soft overlong punishment (`sampling.overlong_buffer > 0`), or None.
        reward_shaping: CLIPO's bonus in reward mode, or None.
        completion: the training forward that supplies hidden states an engine does not return (vllm)
            and the trainer's old log-probs for the importance weights; it runs only when one of them is
            missing, so never with the hf engine.
        importance_cap: truncated importance sampling's cap (None: off); applies to engines that report
            their own log-probs (vllm), and is exactly a no-op with hf.
        reuses_batch: whether the update makes several optimizer steps on a batch of n rollouts
            (`PolicyUpdater.reuses_batch`); then the weights' pi_old must be taken here, before the first
            step; with one step the update's own forward gives pi_old and the completion pass runs only
            when hidden states are missing. None: always.
    """

    def __init__(
        self,
        engine: RolloutEngine,
        verifier: Verifier,
        rewards: RewardScorer,
        advantage: AdvantageEstimator,
        sampling: Sampling,
        group_size: int,
        pad_token_id: int,
        capture_layer: int | None = None,
        dynamic_sampling: DynamicSampling | None = None,
        overlong: OverlongShaping | None = None,
        reward_shaping: ContrastiveRewardShaping | None = None,
        completion: TrainingForwardCompletion | None = None,
        importance_cap: float | None = None,
        reuses_batch: Callable[[int], bool] | None = None,
    ) -> None:
        self.engine, self.verifier, self.rewards, self.advantage = engine, verifier, rewards, advantage
        self.sampling, self.group_size, self.pad_token_id = sampling, group_size, pad_token_id
        self.capture_layer = capture_layer
        self.dynamic_sampling, self.overlong, self.reward_shaping = dynamic_sampling, overlong, reward_shaping
        self.completion, self.importance_cap, self.reuses_batch = completion, importance_cap, reuses_batch

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
        trainer_state: Any = None,
    ) -> CollectedBatch:
        """One step's batch from the prompt `records`.

        Args:
            records: this process's prompts of the step.
            step: RL steps done so far (for CLIPO's head warm-up).
            refill: draws more prompts (dynamic sampling's refills).
            timer: phase timings and generated tokens are added to it.
            generation_context: entered around each generation (e.g. ZeRO-3's weight gathering).
            trainer_state: handed to the reward functions (TRL's `trainer_state`), e.g. the Lightning trainer.
        """
        rollouts, scores = self._generate_and_score(records, timer, generation_context, trainer_state)
        metrics = self._rollout_metrics(rollouts, scores)
        if self.dynamic_sampling is not None:
            rollouts, scores, dapo_metrics = self._keep_informative_groups(
                rollouts, scores, len(records), refill, timer, generation_context, trainer_state
            )
            metrics |= dapo_metrics
        device = rollouts.sequences.device
        rewards, correct = scores.total.to(device), scores.correct.to(device)
        old_logprobs = weights = None
        reuses = self.reuses_batch is None or self.reuses_batch(len(rollouts.responses))
        wants_old = self.importance_cap is not None and rollouts.sampling_logprobs is not None and reuses
        if self.completion is not None and needs_training_forward(rollouts, self.capture_layer, wants_old):
            with timer("logprobs"):
                old_logprobs = self.completion(rollouts, self.capture_layer)
            weights, correction_metrics = self._importance_weights(rollouts, old_logprobs)
            metrics |= correction_metrics
        shaped = rewards if self.overlong is None else rewards + self.overlong(rollouts.response_lengths)
        update_policy, contrastive = True, None
        if self.reward_shaping is not None:
            with timer("contrastive"):
                shaped, contrastive = self.reward_shaping(
                    rollouts.hidden, rollouts.hidden_mask, correct, rollouts.groups, shaped
                )
            metrics |= contrastive.metrics
            update_policy = not self.reward_shaping.policy_waits(step)
        advantages = self.advantage(shaped, rollouts.groups)
        metrics["train/shaped_reward"] = shaped.mean()
        loss, bonus = (None, None) if contrastive is None else (contrastive.per_sample.detach(), contrastive.bonus)
        return CollectedBatch(
            rollouts, rewards, correct, shaped, advantages, update_policy,
            old_logprobs=old_logprobs, importance_weights=weights, metrics=metrics,
            scores=scores, contrastive_loss=loss, bonus=bonus,
        )  # fmt: skip

    def _importance_weights(
        self, rollouts: RolloutBatch, old_logprobs: torch.Tensor
    ) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        """Weights (when on) and the sampler/trainer mismatch (whenever the engine gave its log-probs)."""
        if rollouts.sampling_logprobs is None:
            return None, {}
        cap = self.importance_cap if self.importance_cap is not None else float("inf")
        weights, metrics = truncated_importance_weights(old_logprobs, rollouts.sampling_logprobs, rollouts.response_mask, cap)
        return (weights if self.importance_cap is not None else None), metrics

    def _generate_and_score(
        self, records: list[dict], timer: PhaseTimer, generation_context: Callable[[], AbstractContextManager],
        trainer_state: Any,
    ) -> tuple[RolloutBatch, RewardScores]:
        with timer("generate"), generation_context():
            rollouts = self.engine.generate(records, self.group_size, self.sampling, self.capture_layer)
        scores = self.rewards(records, rollouts, self.group_size, trainer_state)
        for name, seconds in scores.seconds.items():  # each function is a phase of its own
            timer.seconds["verify" if name == "verifier" else f"reward/{name}"] += seconds
        timer.generated_tokens += int(rollouts.response_lengths.sum())
        return rollouts, scores

    def _keep_informative_groups(
        self,
        rollouts: RolloutBatch,
        scores: RewardScores,
        target: int,
        refill: Callable[[], list[dict]],
        timer: PhaseTimer,
        generation_context: Callable[[], AbstractContextManager],
        trainer_state: Any,
    ) -> tuple[RolloutBatch, RewardScores, dict[str, torch.Tensor]]:
        """DAPO dynamic sampling: drop groups whose summed rewards do not vary, refill from further prompts."""
        limit = self.dynamic_sampling.max_refill_batches
        refills = 0
        selection = select_groups(scores.total, rollouts.groups.cpu(), target, refills, limit)
        while selection.need_more:
            more_rollouts, more_scores = self._generate_and_score(refill(), timer, generation_context, trainer_state)
            rollouts = concat_rollouts([rollouts, more_rollouts], self.pad_token_id)
            scores = concat_scores([scores, more_scores])
            refills += 1
            selection = select_groups(scores.total, rollouts.groups.cpu(), target, refills, limit)
        keep = selection.keep.nonzero().squeeze(-1)  # on the CPU, as the scores are
        metrics = {
            "dapo/refills": torch.tensor(float(refills)),
            "dapo/limit_hit": torch.tensor(float(selection.limit_hit)),
            "dapo/informative_group_frac": torch.tensor(selection.num_informative / target),
        }
        return rollouts.select(keep.to(rollouts.sequences.device)), scores.select(keep), metrics

    def _rollout_metrics(self, rollouts: RolloutBatch, scores: RewardScores) -> dict[str, torch.Tensor]:
        stats = self.verifier.stats()
        rewards = scores.total
        return {
            **reward_metrics(scores),
            "train/reward": rewards.mean(),
            "train/acc": scores.correct.float().mean(),
            # groups of the first sampled batch without reward variance (before any filtering)
            "train/zero_var_group_frac": group_stats(rewards, rollouts.groups.cpu()).zero_variance_fraction,
            "train/response_len": rollouts.response_lengths.float().mean(),
            "train/truncation_rate": rollouts.truncated.float().mean(),
            **{f"verifier/{k}": torch.tensor(float(v)) for k, v in stats.items()},
        }
