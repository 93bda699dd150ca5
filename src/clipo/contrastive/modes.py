"""How CLIPO's contrastive term enters the RL step: the mode, decided once, and one adapter per mode.

`ContrastiveMode.resolve(loss_name, mode)` is the one place that reads `loss=` and
`contrastive.mode`; the config check and the builders use its answer:

    OFF     loss=none: plain RLVR, no objective, no head, no hidden states captured
    REWARD  the paper's: detached representations, bonus added to correct rollouts' rewards,
            the head (and a learned pooler) trained on their own loss
    LOSS    coef * contrastive loss added to the policy loss (its gradient reaches the policy)

- `ContrastiveRewardShaping` (reward mode): the collector calls it after scoring; it detaches the
  hidden states, adds the bonus to correct rollouts' rewards and trains the head on its own loss.
- `ContrastiveLossTerm` (loss mode): the updater calls it on each micro-batch's training forward;
  `coef` x its loss joins the policy loss, and the head steps with each policy update.
- `HeadStep`: the optimizer step of the head (and a learned pooler), shared by both.

Shapes: `N` rollouts, `T` response tokens, `D` hidden size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable

import torch

from clipo.contrastive.objective import ContrastiveObjective
from clipo.contrastive.shaping import contrastive_reward
from clipo.distributed import mean_over_ranks, sum_over_ranks, world
from clipo.ops import masked_mean


class ContrastiveMode(str, Enum):
    OFF = "off"
    REWARD = "reward"
    LOSS = "loss"

    @classmethod
    def configurable(cls) -> tuple[str, ...]:
        """The values `contrastive.mode` accepts (besides null)."""
        return (cls.REWARD.value, cls.LOSS.value)

    @classmethod
    def resolve(cls, loss_name: str, mode: str | None) -> ContrastiveMode:
        """OFF for `loss=none`, else the configured mode (REWARD when null).

        Raises:
            ValueError: an unknown mode, or a mode set together with `loss=none`.
        """
        if mode is not None and mode not in cls.configurable():
            raise ValueError(f"contrastive.mode={mode!r} is unknown; choose reward, loss, or null")
        if loss_name == "none":
            if mode is not None:
                raise ValueError(
                    f"contrastive.mode={mode} needs a contrastive loss, but loss=none (plain RLVR) is selected; "
                    "pick a loss (e.g. loss=infonce) or drop contrastive.mode"
                )
            return cls.OFF
        return cls(mode or cls.REWARD.value)


class HeadStep:
    """Optimizer of the objective's trainable parameters (the head and a learned pooler).

    It lives outside Lightning's optimizer list: DeepSpeed supports one optimizer, and in manual
    optimisation each Lightning optimizer step advances `global_step`. `optimizer` stays None
    when nothing is trainable (a fixed head with a parameter-free pooler, or no objective).
    """

    def __init__(self, objective: ContrastiveObjective | None, factory: Callable[..., torch.optim.Optimizer]) -> None:
        self.objective, self.factory = objective, factory
        self.optimizer: torch.optim.Optimizer | None = None

    def configure(self) -> torch.optim.Optimizer | None:
        """Create the optimizer (from `configure_optimizers`, once the parameters are on their device)."""
        params = [] if self.objective is None else [p for p in self.objective.parameters() if p.requires_grad]
        self.optimizer = self.factory(params) if params else None
        return self.optimizer

    def step(self) -> None:
        """One step on the accumulated gradients, averaged across ranks first (DDP does not track the head)."""
        if self.optimizer is None:
            return
        for param in self.objective.parameters():
            if param.grad is not None:
                param.grad = mean_over_ranks(param.grad)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict[str, Any] | None:
        return None if self.optimizer is None else self.optimizer.state_dict()

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state is not None and self.optimizer is not None:
            self.optimizer.load_state_dict(state)


@dataclass
class RewardShapingOutput:
    """What reward shaping adds to a batch: CLIPO's per-rollout losses and bonuses, for the rollout log."""

    loss: torch.Tensor  # [N] L_i before the head's step, detached
    bonus: torch.Tensor  # [N] max(c - lam * L_i, floor) on correct rollouts, 0 on the others
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


def anchor_share(anchors: torch.Tensor) -> torch.Tensor:
    """This rank's weight on its batch loss so that `HeadStep`'s mean of the ranks' gradients is the
    gradient of the mean over every rank's anchors: anchors x world size / all anchors (1 in one process
    with anchors). Ranks hold different numbers of anchors, so the mean of their means is not the mean."""
    return anchors * world()[1] / sum_over_ranks(anchors).clamp(min=1)


class ContrastiveRewardShaping:
    """Reward mode: `rewards + bonus`, the bonus from the head's losses before its own step.

    Args:
        objective, head_step: the contrastive objective and its optimizer step.
        lam, c, floor: bonus_i = max(c - lam * L_i, floor) for correct rollouts.
        head_warmup_steps: the RL step (from 1) of the first policy update (see `policy_waits`).
    """

    def __init__(
        self, objective: ContrastiveObjective, head_step: HeadStep, lam: float = 0.2, c: float = 0.0,
        floor: float = -0.5, head_warmup_steps: int = 0,
    ) -> None:
        if problems := self.problems(lam, c, floor, head_warmup_steps):
            raise ValueError("; ".join(problems))
        self.objective, self.head_step = objective, head_step
        self.lam, self.c, self.floor, self.head_warmup_steps = float(lam), float(c), float(floor), int(head_warmup_steps)

    @staticmethod
    def problems(lam: float, c: float, floor: float, head_warmup_steps: int) -> list[str]:
        """What is wrong with these settings (the config check asks before any model loads)."""
        problems = []
        if lam < 0:
            problems.append(f"contrastive.lam={lam} must be >= 0 (a negative one rewards spreading correct answers)")
        if floor > c:
            problems.append(f"contrastive.floor ({floor}) must be <= contrastive.c ({c}), otherwise every bonus equals "
                            "the floor")
        if head_warmup_steps < 0:
            problems.append(f"contrastive.head_warmup_steps={head_warmup_steps} must be >= 0")
        return problems

    def policy_waits(self, step: int) -> bool:
        """True while only the head trains.

        `step` counts rollout batches already seen (0 for the first). As the official trainer runs
        `critic_warmup` (policy update when `critic_warmup <= global_steps`, steps counted from 1),
        the policy first updates at step `head_warmup_steps` counted from 1: 14 gives 13 head-only
        steps, 0 and 1 give none.
        """
        return step + 1 < self.head_warmup_steps

    def __call__(
        self, hidden: torch.Tensor, mask: torch.Tensor, correct: torch.Tensor, groups: torch.Tensor,
        rewards: torch.Tensor,
    ) -> tuple[torch.Tensor, RewardShapingOutput]:
        """Shaped rewards [N] and the bonus it added, from hidden [N, T, D], mask [N, T], bool correct [N],
        groups [N] and rewards [N]."""
        out = self.objective(hidden.detach(), mask, correct, groups)  # a reward: no gradient may reach the policy
        bonus = contrastive_reward(out.per_sample.detach(), correct, self.lam, self.c, self.floor)
        if self.head_step.optimizer is not None:
            self.head_step.optimizer.zero_grad(set_to_none=True)
            (out.batch_loss * anchor_share(out.anchors)).backward()
            self.head_step.step()
        metrics = out.metrics | {"contrastive/reward_bonus": masked_mean(bonus, correct.bool())}
        return rewards + bonus.to(rewards.dtype), RewardShapingOutput(out.per_sample.detach(), bonus, metrics)


class ContrastiveLossTerm:
    """Loss mode: `coef * contrastive loss` of a micro-batch, added to its policy loss.

    Args:
        objective, head_step: the contrastive objective and its optimizer step.
        coef: weight of the batch loss in the policy loss.
        hidden_layer: the layer of the training forward the objective pools (`rollout.hidden_layer`).
    """

    def __init__(self, objective: ContrastiveObjective, head_step: HeadStep, coef: float, hidden_layer: int) -> None:
        if problems := self.problems(coef):
            raise ValueError("; ".join(problems))
        self.objective, self.head_step, self.coef, self.hidden_layer = objective, head_step, float(coef), hidden_layer

    def __call__(
        self, hidden: torch.Tensor, mask: torch.Tensor, correct: torch.Tensor, groups: torch.Tensor,
        rollouts: int, of: int,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(coef * batch loss * `rollouts` / `of`, metrics): the micro-batch's share of its mini-batch of `of`."""
        out = self.objective(hidden, mask, correct, groups)
        return self.coef * out.batch_loss * rollouts / of, out.metrics

    @staticmethod
    def problems(coef: float) -> list[str]:
        """What is wrong with this setting (the config check asks before any model loads)."""
        if coef < 0:
            return [f"contrastive.coef={coef} must be >= 0 (a negative one rewards spreading correct answers)"]
        return []

    def after_update(self) -> None:
        """The head (and a learned pooler) learn from the same backward as the policy update."""
        self.head_step.step()
