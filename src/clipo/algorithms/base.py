"""What every policy-gradient objective (`algorithm=`) shares: settings, token masks, the KL term, metrics.

One file per option subclasses `PolicyLossBase` and supplies `token_losses` (or, for a loss that is
not a sum of token terms, `policy_loss`). Shapes: `N` rollouts, `T` response tokens (right-padded;
`mask[N, T]` true on response tokens). Log-probabilities are of the sampled tokens. The updater calls

    loss, metrics = algorithm.loss(LossInputs(...), norm)

on each micro-batch, with `norm` the counts of the whole optimizer step (`StepNormalizer`), so the
micro-batch losses of gradient accumulation sum (they are not averaged) to the loss, and the
gradient, of the full batch. `algorithm(logprobs, old, advantages, mask, norm, ref, weights)` is the
same call for the common tensors.
"""

from __future__ import annotations

import torch

from clipo.algorithms.aggregation import AGGREGATIONS, StepNormalizer, aggregate
from clipo.algorithms.inputs import LossInputs
from clipo.algorithms.kl import KL_ESTIMATORS, token_kl
from clipo.algorithms.masks import high_entropy_mask, off_policy_mask
from clipo.algorithms.objectives import TokenLosses
from clipo.ops import masked_mean


class PolicyLossBase:
    """Shared settings, checks, token masks, KL term and metrics.

    Args:
        aggregation: token-mean, seq-mean-token-mean, seq-mean-token-sum or seq-mean-token-sum-norm.
        kl_coef: weight of the KL term to the reference (0: no reference model is loaded).
        kl_estimator: k1, k2 or k3.
        kl_bias_correction: multiply the per-token KL by the importance ratio pi / pi_old (with its
            gradient), which makes the k3 gradient the unbiased reverse-KL gradient (DeepSeek-V3.2;
            TRL's `use_bias_correction_kl`, default there).
        off_policy_mask_threshold: drop negative-advantage rollouts drifted further than this (`masks`); None: off.
        top_entropy_quantile: keep the policy-gradient terms of this top share of tokens by entropy (`masks`); 1: all.
    """

    needs_whole_groups = False  # the loss compares a group's rollouts: each forward must hold whole groups

    def __init__(
        self,
        aggregation: str = "token-mean",
        kl_coef: float = 0.0,
        kl_estimator: str = "k3",
        kl_bias_correction: bool = False,
        off_policy_mask_threshold: float | None = None,
        top_entropy_quantile: float = 1.0,
    ) -> None:
        name = type(self).__name__
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"{name}: unknown aggregation {aggregation!r}; choose one of: {', '.join(AGGREGATIONS)}")
        if kl_estimator not in KL_ESTIMATORS:
            choices = ", ".join(KL_ESTIMATORS)
            raise ValueError(f"algorithm.kl_estimator={kl_estimator!r} is unknown; choose one of: {choices}")
        if kl_coef < 0:
            raise ValueError(f"{name}: kl_coef must be >= 0, got {kl_coef}")
        if not 0.0 <= top_entropy_quantile <= 1.0:
            raise ValueError(f"{name}: top_entropy_quantile must be in [0, 1] (1 keeps every token), "
                             f"got {top_entropy_quantile}")
        if off_policy_mask_threshold is not None and off_policy_mask_threshold < 0:
            raise ValueError(f"{name}: off_policy_mask_threshold must be >= 0 or null (off), "
                             f"got {off_policy_mask_threshold}")
        self.aggregation, self.kl_coef, self.kl_estimator = aggregation, kl_coef, kl_estimator
        self.kl_bias_correction = kl_bias_correction
        self.off_policy_mask_threshold, self.top_entropy_quantile = off_policy_mask_threshold, top_entropy_quantile

    @property
    def uses_reference(self) -> bool:
        """Whether the loss needs reference log-probs (kl_coef > 0); if not, never load the reference model."""
        return self.kl_coef > 0

    def token_losses(self, logprobs, old_logprobs, advantages, mask) -> TokenLosses:  # noqa: ANN001
        raise NotImplementedError

    def __call__(self, logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                 mask: torch.Tensor, norm: StepNormalizer, ref_logprobs: torch.Tensor | None = None,
                 token_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """`loss` on the common tensors (see `LossInputs`)."""
        return self.loss(LossInputs(logprobs, old_logprobs, advantages, mask, ref_logprobs, token_weights), norm)

    def loss(self, inputs: LossInputs, norm: StepNormalizer) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One micro-batch's share of the step loss (plus `kl_coef` * aggregated KL) and detached metrics.

        Returns:
            (loss scalar, metrics): `actor/pg_loss` (this micro-batch's aggregated share), and masked
            token means over this micro-batch of `actor/clip_frac_low`, `actor/clip_frac_high`,
            `actor/approx_kl` (k3 estimate of KL(old || current) on the rollouts),
            `actor/ratio_mean`, with `ref_logprobs` `actor/kl` (the configured estimator), and for
            grpo/dapo `actor/clip_frac_dual`. Clip fractions count tokens whose gradient the clip removes.
        """
        _check_shapes(inputs)
        if self.uses_reference and inputs.ref_logprobs is None:
            raise ValueError(f"kl_coef={self.kl_coef} > 0 needs ref_logprobs; pass them or set kl_coef=0")
        mask = inputs.mask.bool()
        inputs = inputs._replace(logprobs=inputs.logprobs.float(), old_logprobs=inputs.old_logprobs.float().detach(),
                                 advantages=inputs.advantages.float().detach(), mask=mask)
        pg_loss, metrics = self.policy_loss(inputs, norm)
        metrics["actor/approx_kl"] = masked_mean(token_kl(inputs.old_logprobs, inputs.logprobs.detach(), "k3"), mask)
        loss = pg_loss
        if inputs.ref_logprobs is not None:
            kl = token_kl(inputs.logprobs, inputs.ref_logprobs.float().detach(), self.kl_estimator)
            metrics["actor/kl"] = masked_mean(kl.detach(), mask)
            if self.kl_bias_correction:
                kl = kl * self.kl_ratio(inputs)
            loss = loss + self.kl_coef * aggregate(kl, mask, self.aggregation, norm)
        return loss, metrics

    def policy_loss(self, inputs: LossInputs, norm: StepNormalizer) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The aggregated policy-gradient term: `token_losses` times the token factors, and its metrics."""
        mask = inputs.mask
        out = self.token_losses(inputs.logprobs, inputs.old_logprobs, inputs.advantages, mask)
        pg_loss = aggregate(out.losses * self.token_factors(inputs), mask, self.aggregation, norm)
        metrics = {
            "actor/pg_loss": pg_loss.detach(),
            "actor/clip_frac_low": masked_mean(out.clipped_low.float(), mask),
            "actor/clip_frac_high": masked_mean(out.clipped_high.float(), mask),
            "actor/ratio_mean": masked_mean(out.ratio, mask),
        }
        if out.clipped_dual is not None:
            metrics["actor/clip_frac_dual"] = masked_mean(out.clipped_dual.float(), mask)
        return pg_loss, metrics

    def token_factors(self, inputs: LossInputs) -> torch.Tensor | float:
        """[N, T] (or 1.0): the sampler weights times the off-policy and entropy masks, all detached."""
        factors: torch.Tensor | float = 1.0
        if inputs.token_weights is not None:
            factors = inputs.token_weights.detach().float()
        if self.off_policy_mask_threshold is not None:
            sampler = inputs.old_logprobs if inputs.sampling_logprobs is None else inputs.sampling_logprobs
            factors = factors * off_policy_mask(inputs.advantages, inputs.logprobs, sampler, inputs.mask,
                                                self.off_policy_mask_threshold)
        if self.top_entropy_quantile < 1.0:
            if inputs.entropy is None:
                raise ValueError("top_entropy_quantile < 1 needs the per-token entropy in LossInputs.entropy")
            factors = factors * high_entropy_mask(inputs.entropy, inputs.mask, self.top_entropy_quantile).float()
        return factors

    def kl_ratio(self, inputs: LossInputs) -> torch.Tensor:
        """[N, T] pi / pi_old with its gradient, the KL bias correction's factor (token level)."""
        return (inputs.logprobs - inputs.old_logprobs).clamp(-20.0, 20.0).exp()


def check_clip(name: str, **bounds: float | None) -> None:
    """Clip ranges are >= 0 (None: that side is off)."""
    negative = {k: v for k, v in bounds.items() if v is not None and v < 0}
    if negative:
        raise ValueError(f"{name}: {', '.join(negative)} must be >= 0, got {negative}")


def _check_shapes(inputs: LossInputs) -> None:
    logprobs = inputs.logprobs
    if logprobs.dim() != 2:
        raise ValueError(f"logprobs must be [N, T], got shape {tuple(logprobs.shape)}")
    for name in ("old_logprobs", "mask", "ref_logprobs", "token_weights", "sampling_logprobs", "entropy"):
        t = getattr(inputs, name)
        if t is not None and t.shape != logprobs.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected logprobs' {tuple(logprobs.shape)}")
    for name in ("advantages", "groups", "correct", "shaping"):
        t = getattr(inputs, name)
        if t is not None and t.shape != logprobs.shape[:1]:
            want, got = logprobs.shape[0], tuple(t.shape)
            raise ValueError(f"{name} must be [N] = [{want}] (one per rollout), got {got}")
