"""The first half of an RL step: prompts -> one complete trajectory.

    engine.generate -> rewards (verifier + reward_funcs) -> [dynamic sampling: drop groups without
    variance, refill] -> log-prob passes (hidden states the engine did not give, pi_old when the
    update reuses the batch, the reference) -> [overlong shaping] -> [CLIPO reward shaping]
    -> advantage estimator -> Trajectory

Each bracketed stage is a part the builders made or left out (None); the log-prob passes run as
the builders planned them (`LogprobPasses`). Nothing here reads the config or asks a part what
it is. The trajectory is plain data: tensors and small records, no callbacks. Generation, refills
included, runs inside one `generation_context` (under ZeRO-3 / FSDP the weights are gathered once
for the phase, so ranks that refill a different number of times still make the same collectives).
Shapes: `N` rollouts, `T` response tokens.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch

from clipo.contrastive.modes import ContrastiveRewardShaping, RewardShapingOutput
from clipo.groups import group_stats
from clipo.interfaces import AdvantageEstimator, RolloutEngine, Verifier
from clipo.rl.dynamic_sampling import DynamicSampling, OverlongShaping
from clipo.rl.old_policy import LogprobPasses
from clipo.rl.rewards import RewardScorer, RewardScores, reward_metrics
from clipo.rollout.batch import RolloutBatch
from clipo.rollout.sampling import Sampling
from clipo.run.timing import PhaseTimer


@dataclass(frozen=True)
class Trajectory:
    """One step's rollouts and everything the update needs of them; the updater only reads it."""

    rollouts: RolloutBatch  # with CLIPO's hidden states when reward shaping pooled them
    rewards: torch.Tensor  # [N] the reward functions' weighted sum (the verifier alone by default)
    correct: torch.Tensor  # [N] bool, the verifier's score > 0.5 (the contrastive labels), never the sum's
    shaped_rewards: torch.Tensor  # [N] rewards after overlong and CLIPO shaping (what advantages see)
    advantages: torch.Tensor  # [N] float32
    old_logprobs: torch.Tensor | None = None  # [N, T] pi_old taken before the update; None: on-policy (the update's own)
    ref_logprobs: torch.Tensor | None = None  # [N, T] the reference's, when the loss has a KL term
    update_policy: bool = True  # False during CLIPO's head warm-up
    forward_passes: int = 0  # the collector's no-grad passes over the batch (FLOPs accounting)
    step: int = 0  # RL steps done before this one (the loss's training progress, e.g. ConSPO's margin)
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)  # detached scalars
    scores: RewardScores | None = None  # each reward function's scores [N, F], for the rollout log
    contrastive: RewardShapingOutput | None = None  # CLIPO's losses and bonuses in reward mode


class RolloutCollector:
    """Generates, scores, filters and shapes one step's rollouts.

    Args:
        engine: the rollout engine (`rollout.engine`).
        verifier: the training verifier (its counters are logged; its correctness labels the sets).
        rewards: the verifier and the run's own reward functions, summed with weights (`reward_funcs`).
        advantage: the advantage estimator.
        sampling: the engine's sampling settings for training rollouts.
        group_size: rollouts per prompt.
        logprobs: the no-grad passes the builders planned (pi_old, reference, hidden states the engine lacks).
        capture_layer: the hidden layer the engine captures while sampling (reward shaping pools it), or None.
        dynamic_sampling: DAPO's drop-and-refill (`sampling.dynamic`), or None.
        overlong: DAPO's soft overlong punishment (`sampling.overlong_buffer > 0`), or None.
        reward_shaping: CLIPO's bonus in reward mode, or None.
    """

    def __init__(
        self,
        engine: RolloutEngine,
        verifier: Verifier,
        rewards: RewardScorer,
        advantage: AdvantageEstimator,
        sampling: Sampling,
        group_size: int,
        logprobs: LogprobPasses,
        capture_layer: int | None = None,
        dynamic_sampling: DynamicSampling | None = None,
        overlong: OverlongShaping | None = None,
        reward_shaping: ContrastiveRewardShaping | None = None,
    ) -> None:
        self.engine, self.verifier, self.rewards, self.advantage = engine, verifier, rewards, advantage
        self.sampling, self.group_size, self.logprobs = sampling, group_size, logprobs
        self.dynamic_sampling, self.overlong, self.reward_shaping = dynamic_sampling, overlong, reward_shaping
        self.capture_layer = capture_layer

    def close(self) -> None:
        """Shut the training verifier's worker pool down."""
        self.verifier.close()

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
        sampled: RolloutBatch | None = None,
    ) -> Trajectory:
        """One step's trajectory from the prompt `records`.

        Args:
            records: this process's prompts of the step.
            step: RL steps done so far (for CLIPO's head warm-up).
            refill: draws more prompts (dynamic sampling's refills).
            timer: phase timings and generated tokens are added to it.
            generation_context: entered around the sampling phase, refills included (e.g. ZeRO-3's weight gathering).
            trainer_state: handed to the reward functions (TRL's `trainer_state`), e.g. the Lightning trainer.
            sampled: `records`' rollouts sampled already (the asynchronous pipeline's), or None: sample now.
        """
        sample = lambda prompts, rollouts=None: self._generate_and_score(prompts, timer, trainer_state, rollouts)  # noqa: E731
        with generation_context():
            rollouts, scores = sample(records, sampled)
            metrics = self._rollout_metrics(rollouts, scores)
            if self.dynamic_sampling is not None:
                rollouts, scores, dapo_metrics = self.dynamic_sampling.fill(rollouts, scores, len(records),
                                                                            lambda: sample(refill()))
                metrics |= dapo_metrics
        update_policy = self.reward_shaping is None or not self.reward_shaping.policy_waits(step)
        with timer("logprobs"):
            passes = self.logprobs(rollouts, update_policy)
        if passes.hidden is not None:
            rollouts = replace(rollouts, hidden=passes.hidden)
        device = rollouts.sequences.device
        rewards, correct = scores.total.to(device), scores.correct.to(device)
        shaped = rewards if self.overlong is None else rewards + self.overlong(rollouts.response_lengths)
        contrastive = None
        if self.reward_shaping is not None:
            with timer("contrastive"):
                shaped, contrastive = self.reward_shaping(
                    rollouts.hidden, rollouts.hidden_mask, correct, rollouts.groups, shaped
                )
            metrics |= contrastive.metrics
        # each reward function's score and the shaping on top: the components GDPO normalises apart
        components = torch.cat([scores.scores.to(device), (shaped - rewards).unsqueeze(-1)], dim=-1)  # [N, F + 1]
        weights = torch.cat([scores.weights.to(device).float(), torch.ones(1, device=device)])
        advantages = self.advantage(shaped, rollouts.groups, rollouts.response_lengths, components, weights)
        metrics["train/shaped_reward"] = shaped.mean()
        return Trajectory(rollouts, rewards, correct, shaped, advantages, old_logprobs=passes.old_logprobs,
                          ref_logprobs=passes.ref_logprobs, update_policy=update_policy, forward_passes=passes.passes,
                          step=step, metrics=metrics, scores=scores, contrastive=contrastive)

    def _generate_and_score(
        self, records: list[dict], timer: PhaseTimer, trainer_state: Any, rollouts: RolloutBatch | None = None,
    ) -> tuple[RolloutBatch, RewardScores]:
        if rollouts is None:
            with timer("generate"):
                rollouts = self.engine.generate(records, self.group_size, self.sampling, self.capture_layer)
        scores = self.rewards(records, rollouts, trainer_state)
        for name, seconds in scores.seconds.items():  # each function is a phase of its own
            timer.seconds["verify" if name == "verifier" else f"reward/{name}"] += seconds
        timer.generated_tokens += int(rollouts.response_lengths.sum())
        return rollouts, scores

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
