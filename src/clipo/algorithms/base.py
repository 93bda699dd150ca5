"""What every policy-gradient objective (`algorithm=`) shares: hyper-parameter checks, the KL term, metrics.

One file per option (`grpo.py`, `dapo.py`, `gspo.py`, `gmpo.py`) subclasses `PolicyLossBase`. Shapes: `N` rollouts, `T` response tokens (right-padded; `mask[N, T]` is true on
response tokens). Log-probabilities are of the sampled tokens. Every algorithm is
called as

    loss, metrics = algorithm(logprobs, old_logprobs, advantages, mask, norm, ref_logprobs=None)

on one micro-batch, with `norm = StepNormalizer.from_mask(masks of the whole optimizer step)`
computed once per optimizer step, so the micro-batch losses of gradient accumulation sum
(they are not averaged) to the loss, and the gradient, of the full batch.
"""

from __future__ import annotations

import torch

from clipo.ops import masked_mean
from clipo.algorithms.aggregation import AGGREGATIONS, StepNormalizer, aggregate
from clipo.algorithms.kl import KL_ESTIMATORS, token_kl
from clipo.algorithms.objectives import TokenLosses


class PolicyLossBase:
    """Shared hyperparameters, checks, KL term and metrics; subclasses supply `token_losses`."""

    def __init__(self, clip_low: float, clip_high: float, aggregation: str, kl_coef: float, kl_estimator: str) -> None:
        name = type(self).__name__
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"{name}: unknown aggregation {aggregation!r}; choose one of: {', '.join(AGGREGATIONS)}")
        if kl_estimator not in KL_ESTIMATORS:
            choices = ", ".join(KL_ESTIMATORS)
            raise ValueError(f"{name}: unknown kl_estimator {kl_estimator!r}; choose one of: {choices}")
        if clip_low < 0 or clip_high < 0 or kl_coef < 0:
            got = f"{clip_low}, {clip_high}, {kl_coef}"
            raise ValueError(f"{name}: clip_low, clip_high and kl_coef must be >= 0, got {got}")
        self.clip_low, self.clip_high, self.aggregation = clip_low, clip_high, aggregation
        self.kl_coef, self.kl_estimator = kl_coef, kl_estimator

    @property
    def uses_reference(self) -> bool:
        """Whether the loss needs reference log-probs (kl_coef > 0); if not, never load the reference model."""
        return self.kl_coef > 0

    def token_losses(self, logprobs, old_logprobs, advantages, mask) -> TokenLosses:  # noqa: ANN001
        raise NotImplementedError

    def __call__(
        self,
        logprobs: torch.Tensor,
        old_logprobs: torch.Tensor,
        advantages: torch.Tensor,
        mask: torch.Tensor,
        norm: StepNormalizer,
        ref_logprobs: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One micro-batch's share of the step loss (plus `kl_coef` * aggregated KL) and detached metrics.

        Args:
            logprobs: [N, T] current policy log-probs of the sampled tokens (with gradient).
            old_logprobs: [N, T] log-probs under the sampling (old) policy.
            advantages: [N] one advantage per rollout.
            mask: [N, T] bool, true on response tokens.
            norm: counts over the whole optimizer step (`StepNormalizer.from_mask`).
            ref_logprobs: [N, T] reference log-probs; required when `uses_reference`.

        Returns:
            (loss scalar, metrics): `actor/pg_loss` (this micro-batch's aggregated share), and masked
            token means over this micro-batch of `actor/clip_frac_low`, `actor/clip_frac_high`,
            `actor/approx_kl` (k3 estimate of KL(old || current) on the rollouts),
            `actor/ratio_mean`, with `ref_logprobs` `actor/kl` (the configured estimator), and for
            grpo/dapo `actor/clip_frac_dual`. Clip fractions count tokens whose gradient the clip removes.
        """
        _check_shapes(logprobs, old_logprobs, advantages, mask, ref_logprobs)
        if self.uses_reference and ref_logprobs is None:
            raise ValueError(f"kl_coef={self.kl_coef} > 0 needs ref_logprobs; pass them or set kl_coef=0")
        mask = mask.bool()
        logprobs, old_logprobs = logprobs.float(), old_logprobs.float().detach()
        out = self.token_losses(logprobs, old_logprobs, advantages.float().detach(), mask)
        pg_loss = aggregate(out.losses, mask, self.aggregation, norm)
        metrics = {
            "actor/pg_loss": pg_loss.detach(),
            "actor/clip_frac_low": masked_mean(out.clipped_low.float(), mask),
            "actor/clip_frac_high": masked_mean(out.clipped_high.float(), mask),
            "actor/approx_kl": masked_mean(token_kl(old_logprobs, logprobs.detach(), "k3"), mask),
            "actor/ratio_mean": masked_mean(out.ratio, mask),
        }
        if out.clipped_dual is not None:
            metrics["actor/clip_frac_dual"] = masked_mean(out.clipped_dual.float(), mask)
        loss = pg_loss
        if ref_logprobs is not None:
            kl = token_kl(logprobs, ref_logprobs.float().detach(), self.kl_estimator)
            loss = loss + self.kl_coef * aggregate(kl, mask, self.aggregation, norm)
            metrics["actor/kl"] = masked_mean(kl.detach(), mask)
        return loss, metrics


def _check_shapes(logprobs, old_logprobs, advantages, mask, ref_logprobs) -> None:  # noqa: ANN001
    if logprobs.dim() != 2:
        raise ValueError(f"logprobs must be [N, T], got shape {tuple(logprobs.shape)}")
    for name, t in (("old_logprobs", old_logprobs), ("mask", mask), ("ref_logprobs", ref_logprobs)):
        if t is not None and t.shape != logprobs.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected logprobs' {tuple(logprobs.shape)}")
    if advantages.shape != logprobs.shape[:1]:
        want, got = logprobs.shape[0], tuple(advantages.shape)
        raise ValueError(f"advantages must be [N] = [{want}] (one per rollout), got {got}")
