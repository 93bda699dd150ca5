"""`algorithm=conspo`: a group-wise InfoNCE over length-normalised sequence log-probabilities (ConSPO).

Zhang et al. 2026, "Revisiting RLVR from a Contrastive Perspective", https://arxiv.org/abs/2605.12969.
Per group (prompt) q with correct rollouts P (positives) and incorrect ones (negatives), the score of a
rollout o is `s(o) = (1/|o|) sum_t log pi(o_t | q, o_<t)` under the current policy, and ConSPO
maximises (Eq. 13)

    J(q) = (1/|P|) sum_{i in P} tau * log( e^{(s_i - m)/tau} / (e^{(s_i - m)/tau} + sum_j e^{s_j/tau}) )

over negatives j only (other positives are not in the denominator), with the margin curriculum
`m = (M/2)(1 - cos(pi rho))`, `rho = min(progress / alpha, 1)`, progress = RL steps done / total.
No ratio, no clip, no advantage. Groups without a positive or a negative are dropped; the loss is
`-J` averaged over the step's remaining groups (`StepNormalizer.mixed_groups`), so each forward must
hold whole groups (`needs_whole_groups`). Shapes: `N` rollouts, `T` response tokens.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from clipo.algorithms.aggregation import StepNormalizer
from clipo.algorithms.base import PolicyLossBase
from clipo.algorithms.inputs import LossInputs
from clipo.ops import masked_mean
from clipo.registry import ALGORITHMS


def conspo_margin(margin: float, alpha: float, step: int, total_steps: int | None) -> float:
    """`(M/2)(1 - cos(pi rho))`, `rho = min(step / (alpha * total_steps), 1)`; rho = 1 (the full margin
    throughout) when alpha is 0 or total_steps is None."""
    rho = 1.0 if alpha == 0 or total_steps is None else min(step / (alpha * total_steps), 1.0)
    return margin / 2 * (1.0 - math.cos(math.pi * rho))


def conspo_rollout_losses(scores: torch.Tensor, groups: torch.Tensor, correct: torch.Tensor, tau: float,
                          margin: float, weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Each positive's share of `-J(q)` (Eq. 13), 0 for negatives and dropped groups.

    Args:
        scores: [N] sequence scores s (with gradient).
        groups: [N] integer group ids. correct: [N] bool, the positives.
        tau: temperature, kept outside the log so the gradient w.r.t. s is not scaled by 1/tau.
        margin: m, subtracted from each positive's score in numerator and denominator.
        weights: [N] a factor on each positive's term (None: 1).

    Returns:
        ([N] `-w_i J_i / |P(q)|`, [N] bool: the rollout's group has a positive and a negative).
    """
    correct = correct.bool()
    same = groups.unsqueeze(-1) == groups.unsqueeze(0)  # [N, N]
    negative_of = same & ~correct.unsqueeze(0)  # [N, N] j is a negative of i's group
    positives = (same & correct.unsqueeze(0)).sum(-1)  # [N] |P| of i's group
    shifted = scores - margin  # [N] s_i - m
    others = torch.where(negative_of, scores.unsqueeze(0) / tau, float("-inf"))  # [N, N] s_j / tau
    log_denominator = torch.logsumexp(torch.cat([(shifted / tau).unsqueeze(-1), others], dim=-1), dim=-1)
    per_positive = shifted - tau * log_denominator  # [N] J_i = tau * log(e^{(s_i - m)/tau} / denominator)
    mixed = negative_of.any(-1) & (positives > 0)
    if weights is not None:
        per_positive = per_positive * weights
    losses = torch.where(correct & mixed, -per_positive / positives.clamp(min=1), 0.0)
    return losses, mixed


@ALGORITHMS.register("conspo")
class ConSPOLoss(PolicyLossBase):
    """`algorithm=conspo`: see the module docstring. The paper's tau 10, margin M 0.01, alpha 0.3.

    Extensions, each the identity in the paper's setting: the token factors (sampler weights, the
    off-policy and entropy masks) scale each token's share of the score's gradient, not its value; and
    each positive's term is weighted by `max(0, 1 + shaping)`, what reward shaping (CLIPO's reward mode,
    overlong shaping) added to its reward, so a correct rollout CLIPO penalises pulls less (weight 1
    without shaping). The KL term, when on, is the shared one, aggregated by `aggregation`.

    Args:
        tau, margin, alpha: the paper's temperature, margin M and curriculum length (fraction of training).
        total_steps: the run's RL steps (`trainer.max_steps`); None: the full margin from the first step.
    """

    needs_whole_groups = True

    def __init__(
        self,
        tau: float = 10.0,
        margin: float = 0.01,
        alpha: float = 0.3,
        total_steps: int | None = None,
        aggregation: str = "token-mean",
        **common: Any,
    ) -> None:
        super().__init__(aggregation, **common)  # the KL term, masks (`PolicyLossBase`)
        if tau <= 0 or margin < 0 or alpha < 0:
            raise ValueError(f"ConSPOLoss: tau must be > 0 and margin, alpha >= 0, got {tau}, {margin}, {alpha}")
        if total_steps is not None and total_steps <= 0:
            raise ValueError(f"ConSPOLoss: total_steps={total_steps}: the margin curriculum needs the run's length; "
                             "set trainer.max_steps (algorithm.total_steps follows it), or algorithm.total_steps=null "
                             "for the full margin from the start")
        self.tau, self.margin, self.alpha, self.total_steps = tau, margin, alpha, total_steps

    def policy_loss(self, inputs: LossInputs, norm: StepNormalizer) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if inputs.groups is None or inputs.correct is None:
            raise ValueError("algorithm=conspo needs each rollout's group id and correctness "
                             "(LossInputs.groups, .correct)")
        mask, logprobs = inputs.mask, inputs.logprobs
        factors = self.token_factors(inputs)
        # the score's value is the plain mean; each token's gradient share is scaled by its factor
        weighted = logprobs.detach() + factors * (logprobs - logprobs.detach())
        scores = masked_mean(weighted, mask, dim=-1)  # [N]
        m = conspo_margin(self.margin, self.alpha, inputs.step, self.total_steps)
        weights = None if inputs.shaping is None else (1.0 + inputs.shaping.float()).clamp(min=0.0)
        losses, mixed = conspo_rollout_losses(scores, inputs.groups, inputs.correct, self.tau, m, weights)
        pg_loss = losses.sum() / norm.mixed_groups
        return pg_loss, self._metrics(pg_loss, scores.detach(), inputs, mixed, m)

    def _metrics(self, pg_loss: torch.Tensor, scores: torch.Tensor, inputs: LossInputs, mixed: torch.Tensor,
                 margin: float) -> dict[str, torch.Tensor]:
        correct, zero = inputs.correct.bool(), pg_loss.new_zeros(())
        ratio = (inputs.logprobs.detach() - inputs.old_logprobs).clamp(-20.0, 20.0).exp()
        positive, negative = mixed & correct, mixed & ~correct
        gap = masked_mean(scores, positive) - masked_mean(scores, negative) if mixed.any() else zero
        return {
            "actor/pg_loss": pg_loss.detach(),
            "actor/clip_frac_low": zero,
            "actor/clip_frac_high": zero,
            "actor/ratio_mean": masked_mean(ratio, inputs.mask),
            "conspo/margin": torch.tensor(margin),
            "conspo/score_gap": gap,
            "conspo/mixed_rollout_frac": mixed.float().mean() if len(mixed) else zero,
        }
