"""Where CLIPO's objective enters the RL step: one class per mode, chosen once by the builders.

- `ContrastiveRewardShaping` (mode REWARD): the collector calls it after scoring; it adds the
  bonus to correct rollouts' rewards and trains the head on its own loss.
- `ContrastiveLossTerm` (mode LOSS): the updater calls it on each micro-batch's training
  forward; its loss joins the policy loss, and the head steps with each policy update.
- `HeadStep`: the optimizer step of the head (and a learned pooler), shared by both.

Shapes: `N` rollouts, `T` response tokens, `D` hidden size.
"""

from __future__ import annotations

from typing import Callable

import torch

from clipo.contrastive.objective import ContrastiveObjective
from clipo.distributed import mean_over_ranks


class HeadStep:
    """Optimizer of the objective's trainable parameters (the head and a learned pooler).

    It lives outside Lightning's optimizer list: DeepSpeed supports one optimizer, and in manual
    optimisation each Lightning optimizer step advances `global_step`. `optimizer` stays None
    when nothing is trainable (a fixed head with a parameter-free pooler, or mode OFF).
    """

    def __init__(self, objective: ContrastiveObjective, factory: Callable[..., torch.optim.Optimizer]) -> None:
        self.objective, self.factory = objective, factory
        self.optimizer: torch.optim.Optimizer | None = None

    def configure(self) -> torch.optim.Optimizer | None:
        """Create the optimizer (from `configure_optimizers`, once the parameters are on their device)."""
        params = [p for p in self.objective.parameters() if p.requires_grad]
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


class ContrastiveRewardShaping:
    """Mode REWARD: `rewards + bonus`, the bonus from the head's losses before its own step."""

    def __init__(self, objective: ContrastiveObjective, head_step: HeadStep) -> None:
        self.objective, self.head_step = objective, head_step

    def policy_waits(self, step: int) -> bool:
        """True during the head's warm-up (`contrastive.head_warmup_steps`): the policy does not update."""
        return self.objective.policy_waits(step)

    def __call__(
        self, hidden: torch.Tensor, mask: torch.Tensor, correct: torch.Tensor, groups: torch.Tensor,
        rewards: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Shaped rewards [N] and metrics, from hidden [N, T, D], mask [N, T], bool correct [N], groups [N]."""
        out = self.objective(hidden, mask, correct, groups)
        if self.head_step.optimizer is not None:
            self.head_step.optimizer.zero_grad(set_to_none=True)
            out.batch_loss.backward()
            self.head_step.step()
        return rewards + out.bonus.to(rewards.dtype), out.metrics


class ContrastiveLossTerm:
    """Mode LOSS: `coef * contrastive loss` of a micro-batch, added to its policy loss."""

    def __init__(self, objective: ContrastiveObjective, head_step: HeadStep) -> None:
        self.objective, self.head_step = objective, head_step

    def __call__(
        self, hidden: torch.Tensor, mask: torch.Tensor, correct: torch.Tensor, groups: torch.Tensor,
        rollouts: int, of: int,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(coef * batch loss * `rollouts` / `of`, metrics): the micro-batch's share of its mini-batch of `of`."""
        out = self.objective(hidden, mask, correct, groups)
        return out.policy_term * rollouts / of, out.metrics

    def after_update(self) -> None:
        """The head (and a learned pooler) learn from the same backward as the policy update."""
        self.head_step.step()
