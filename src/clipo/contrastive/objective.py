"""CLIPO's contrastive objective: pooler -> head -> loss -> reward bonus and metrics.

Shapes: `N` rollouts, `T` response tokens, `D` hidden size. DESIGN.md section 1, arXiv 2603.10101.

Usage in `mode=REWARD` (the paper's), by `clipo.contrastive.steps.ContrastiveRewardShaping`:

    out = objective(hidden, mask, labels, groups)   # hidden detached inside
    out.batch_loss.backward(); head_opt.step()      # head_opt over objective.parameters()
    rewards = rewards + out.bonus                   # bonus from the losses before the step

and in `mode=LOSS` (`ContrastiveLossTerm`): `policy_loss = policy_loss + out.policy_term` (coef * batch_loss).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from clipo.contrastive.losses import ContrastiveLoss
from clipo.contrastive.mode import ContrastiveMode
from clipo.contrastive.sets import labels_to_bool
from clipo.contrastive.shaping import contrastive_reward, similarity_stats
from clipo.ops import masked_mean


@dataclass
class ContrastiveOutput:
    """What one contrastive pass returns; all float32."""

    per_sample: torch.Tensor  # [N] L_i, with graph to head and pooler
    batch_loss: torch.Tensor  # [] mean over anchors, with graph to head and pooler
    bonus: torch.Tensor  # [N] detached reward bonus (zeros in loss mode)
    policy_term: torch.Tensor  # [] coef * batch_loss in loss mode, 0 in reward mode
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)  # detached scalars


class ContrastiveObjective(nn.Module):
    """Ties pooler, head and loss together and turns the loss into a reward bonus or a loss term.

    Rule for `loss=none` (the plain-RLVR baseline): the objective's mode is OFF whatever `mode`
    says. It drops the head and the pooler (so they hold no parameters, optimizer state or
    unused DDP parameters), and `forward` returns zeros and no metrics without pooling
    anything. This lets `loss=none` work with the default `head` and `pooler` configs unchanged.

    Args:
        pooler: a POOLERS module (attention has parameters).
        head: a HEADS module; required unless the loss is `none`.
        loss: a LOSSES module.
        mode: a `ContrastiveMode` (or its value): REWARD (detached representations, bonus added to
            rewards) or LOSS (coef * batch loss added to the policy loss; gradient reaches the policy).
        lam, c, floor: bonus_i = max(c - lam * L_i, floor) for correct rollouts.
        coef: weight of the batch loss in the policy loss (loss mode).
        head_warmup_steps: steps during which only the head trains (see `policy_waits`).
    """

    def __init__(
        self,
        pooler: nn.Module,
        head: nn.Module | None,
        loss: ContrastiveLoss,
        mode: ContrastiveMode | str = ContrastiveMode.REWARD,
        lam: float = 0.2,
        c: float = 0.0,
        floor: float = -0.5,
        coef: float = 0.1,
        head_warmup_steps: int = 0,
    ) -> None:
        super().__init__()
        if mode not in ContrastiveMode.configurable() and mode is not ContrastiveMode.OFF:
            raise ValueError(f"unknown contrastive mode {mode!r}; choose one of: {', '.join(ContrastiveMode.configurable())}")
        if lam < 0 or coef < 0:
            raise ValueError(
                f"lam and coef must be >= 0 (a negative one rewards spreading correct answers), got {lam}, {coef}"
            )
        if floor > c:
            raise ValueError(f"floor ({floor}) must be <= c ({c}), otherwise every bonus equals the floor")
        if head_warmup_steps < 0:
            raise ValueError(f"head_warmup_steps must be >= 0, got {head_warmup_steps}")
        if loss.enabled and head is None:
            raise ValueError("a contrastive loss needs a head; build one with HEADS.build(...) or use loss=none")
        self.loss = loss
        self.pooler = pooler if loss.enabled else None
        self.head = head if loss.enabled else None
        self.mode = ContrastiveMode(mode) if loss.enabled else ContrastiveMode.OFF
        self.lam, self.c, self.floor = float(lam), float(c), float(floor)
        self.coef, self.head_warmup_steps = float(coef), int(head_warmup_steps)

    @property
    def enabled(self) -> bool:
        return self.mode is not ContrastiveMode.OFF

    def policy_waits(self, step: int) -> bool:
        """True while only the head trains (the first `head_warmup_steps` steps in reward mode)."""
        return self.mode is ContrastiveMode.REWARD and step < self.head_warmup_steps

    def forward(
        self, hidden: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor
    ) -> ContrastiveOutput:
        """Contrastive loss, bonus and metrics for a batch.

        Args:
            hidden: [N, T, D] response-token hidden states of the captured layer (`rollout.capture_layer`).
            mask: [N, T] True on response tokens.
            labels: [N] verifier labels, bool or 0/1.
            groups: [N] prompt ids.
        """
        if not self.enabled:
            zeros = torch.zeros(labels.shape[0], dtype=torch.float32, device=labels.device)
            return ContrastiveOutput(zeros, zeros.sum(), zeros, zeros.sum())
        labels = labels_to_bool(labels)  # checked once; bool labels skip the later checks
        if self.mode is ContrastiveMode.REWARD:
            hidden = hidden.detach()  # the bonus is a reward: no gradient may reach the policy
        pooled = self.pooler(hidden, mask)  # [N, D] float32
        embeddings = self.head(pooled)  # [N, E] unit
        per_sample, batch_loss = self.loss(embeddings, labels, groups)
        if self.mode is ContrastiveMode.REWARD:
            bonus = contrastive_reward(per_sample.detach(), labels, self.lam, self.c, self.floor)
            policy_term = torch.zeros_like(batch_loss)
        else:
            bonus = torch.zeros_like(per_sample).detach()
            policy_term = self.coef * batch_loss
        metrics = self._metrics(pooled, embeddings, labels, groups, batch_loss, bonus)
        return ContrastiveOutput(per_sample, batch_loss, bonus, policy_term, metrics)

    def _metrics(self, pooled, embeddings, labels, groups, batch_loss, bonus) -> dict[str, torch.Tensor]:
        sets = self.loss.sets(labels, groups)
        hidden_stats = similarity_stats(pooled, sets)
        embed_stats = similarity_stats(embeddings, sets)
        return {
            "contrastive/loss": batch_loss.detach(),
            "contrastive/anchor_frac": sets.anchors.float().sum() / max(labels.shape[0], 1),
            "contrastive/pos_cos_hidden": hidden_stats["pos_cos"],
            "contrastive/neg_cos_hidden": hidden_stats["neg_cos"],
            "contrastive/pos_cos_embed": embed_stats["pos_cos"],
            "contrastive/neg_cos_embed": embed_stats["neg_cos"],
            # the cosines read 0 when there are no pairs; the counts tell that apart
            "contrastive/pos_pairs": embed_stats["pos_pairs"],
            "contrastive/neg_pairs": embed_stats["neg_pairs"],
            "contrastive/reward_bonus": masked_mean(bonus, labels),
        }
