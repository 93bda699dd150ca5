"""Policy-gradient objectives (`algorithm=`), loss aggregation and KL estimators.

Shapes: `N` rollouts, `T` response tokens (right-padded; `mask[N, T]` is true on
response tokens). Log-probabilities are of the sampled tokens. Every algorithm is
called as

    loss, metrics = algorithm(logprobs, old_logprobs, advantages, mask, norm, ref_logprobs=None)

on one micro-batch, with `norm = StepNormalizer.from_mask(masks of the whole optimizer step)`
computed once per optimizer step, so the micro-batch losses of gradient accumulation sum
(they are not averaged) to the loss, and the gradient, of the full batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch

from clipo.registry import ALGORITHMS

AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
KL_ESTIMATORS = ("k1", "k2", "k3")


@dataclass(frozen=True)
class StepNormalizer:
    """Counts over every rollout of one optimizer step, used as the aggregation denominators.

    Attributes:
        tokens: response tokens in the step (token-mean).
        sequences: rollouts with at least one response token in the step (the seq-mean modes).
        max_len: the constant length of seq-mean-token-sum-norm (Dr. GRPO's generation budget).
    """

    tokens: float
    sequences: float
    max_len: int

    def __post_init__(self) -> None:
        if self.tokens <= 0 or self.sequences <= 0 or self.max_len <= 0:
            raise ValueError(f"StepNormalizer counts must be positive, got {self}")

    @classmethod
    def from_mask(cls, mask: torch.Tensor | Sequence[torch.Tensor], max_len: int | None = None) -> StepNormalizer:
        """Count the response masks [N, T] of the whole step (one tensor, or one per micro-batch).

        `max_len` defaults to the widest mask's T; pass the generation budget (max new tokens)
        for Dr. GRPO's exact constant. An all-empty step counts as 1 token and 1 sequence (its
        loss is 0 either way). Under DDP each rank normalises by its own counts.
        """
        masks = [mask] if isinstance(mask, torch.Tensor) else list(mask)
        if not masks or any(m.dim() != 2 for m in masks):
            raise ValueError("from_mask needs one or more [N, T] response masks")
        tokens = sum(int(m.bool().sum()) for m in masks)
        sequences = sum(int(m.bool().any(-1).sum()) for m in masks)
        width = max_len if max_len is not None else max(m.shape[-1] for m in masks)
        return cls(tokens=float(max(tokens, 1)), sequences=float(max(sequences, 1)), max_len=int(width))


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # where, not multiply: padding positions may hold inf/NaN and 0 * inf is NaN
    return torch.where(mask, values, 0.0).sum() / mask.sum().clamp(min=1)


def aggregate(loss_mat: torch.Tensor, mask: torch.Tensor, mode: str, norm: StepNormalizer) -> torch.Tensor:
    """Reduce per-token losses [N, T] of one micro-batch to its share of the step's scalar loss.

    - `token-mean`: sum of token losses / `norm.tokens`.
    - `seq-mean-token-mean`: sum over rollouts of their token mean / `norm.sequences`.
    - `seq-mean-token-sum`: sum over rollouts of their token sum / `norm.sequences`.
    - `seq-mean-token-sum-norm` (Dr. GRPO, arXiv 2503.20783): sum of token losses /
      (`norm.sequences` * `norm.max_len`).

    Each is linear in the micro-batch's rollouts, so summing over micro-batches gives the full batch.
    """
    mask = mask.bool()
    token_sums = torch.where(mask, loss_mat, 0.0).sum(-1)  # [N]
    if mode == "token-mean":
        return token_sums.sum() / norm.tokens
    if mode == "seq-mean-token-mean":
        return (token_sums / mask.sum(-1).clamp(min=1)).sum() / norm.sequences
    if mode == "seq-mean-token-sum":
        return token_sums.sum() / norm.sequences
    if mode == "seq-mean-token-sum-norm":
        return token_sums.sum() / (norm.sequences * norm.max_len)
    raise ValueError(f"unknown aggregation {mode!r}; choose one of: {', '.join(AGGREGATIONS)}")


def token_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-token estimate [N, T] of KL(pi || pi_ref) on tokens sampled from pi.

    Schulman, "Approximating KL divergence", http://joschu.net/blog/kl-approx.html, with
    `log_ratio = logprobs - ref_logprobs`: `k1 = log_ratio` (unbiased), `k2 = log_ratio**2 / 2`,
    `k3 = exp(-log_ratio) + log_ratio - 1` (unbiased, >= 0). As verl's `low_var_kl`, k3 clamps
    `-log_ratio` to [-20, 20] before the exp and the result to [-10, 10].
    """
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    if estimator == "k3":
        neg = (-log_ratio).clamp(-20.0, 20.0)
        return (neg.exp() - neg - 1.0).clamp(-10.0, 10.0)
    raise ValueError(f"unknown KL estimator {estimator!r}; choose one of: {', '.join(KL_ESTIMATORS)}")


class TokenLosses(NamedTuple):
    """What an objective returns before aggregation (all [N, T])."""

    losses: torch.Tensor  # per-token loss
    clipped_low: torch.Tensor  # bool: A < 0 and the ratio is clipped from below (no gradient)
    clipped_high: torch.Tensor  # bool: A > 0 and the ratio is clipped from above (no gradient)
    ratio: torch.Tensor  # the importance ratio the objective clips, for logging
    clipped_dual: torch.Tensor | None = None  # bool: A < 0 and the dual clip bound is active


def clipped_surrogate(
    ratio: torch.Tensor, advantages: torch.Tensor, clip_low: float, clip_high: float, clip_c: float | None = None
) -> TokenLosses:
    """PPO clipped loss `max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high))`, optionally dual-clipped.

    PPO: Schulman et al. 2017, https://arxiv.org/abs/1707.06347. Dual clip (Ye et al. 2019,
    https://arxiv.org/abs/1912.09729): for A < 0 the loss is further capped at `-A * clip_c`.

    Args:
        ratio: [N, T] importance ratios (with gradient).
        advantages: [N, 1] or [N, T] advantages.
    """
    unclipped = -advantages * ratio
    losses = torch.maximum(unclipped, -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high))
    high = (advantages > 0) & (ratio > 1.0 + clip_high)
    low = (advantages < 0) & (ratio < 1.0 - clip_low)
    dual = None
    if clip_c is not None:
        bound = -advantages * clip_c
        dual = (advantages < 0) & (losses > bound)
        losses = torch.where(dual, bound, losses)
    return TokenLosses(losses, low, high, ratio.detach(), dual)


def ppo_token_losses(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    clip_low: float,
    clip_high: float,
    clip_c: float | None = None,
) -> TokenLosses:
    """Token-level PPO/GRPO/DAPO objective; `advantages` [N] is broadcast over tokens."""
    ratio = (logprobs - old_logprobs).clamp(-20.0, 20.0).exp()  # clamp: exp overflow on stale tokens
    return clipped_surrogate(ratio, advantages.unsqueeze(-1), clip_low, clip_high, clip_c)


def gspo_token_losses(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float,
    clip_high: float,
) -> TokenLosses:
    """GSPO: clip the sequence ratio `s_i = exp(mean_t log(pi / pi_old))` over response tokens.

    Zheng et al. 2025, https://arxiv.org/abs/2507.18071. The gradient flows through the
    token-level form `s_it = sg[s_i] * pi(y_t) / sg[pi(y_t)]` (GSPO-token, Sec. 4.3), whose value
    equals `s_i` and whose gradient with seq-mean-token-mean aggregation is GSPO's.
    """
    seq_log_ratio = _masked_mean_rows(logprobs - old_logprobs, mask)  # [N]
    token_form = logprobs - logprobs.detach() + seq_log_ratio.detach().unsqueeze(-1)  # [N, T]
    return clipped_surrogate(token_form.clamp(max=10.0).exp(), advantages.unsqueeze(-1), clip_low, clip_high)


def gmpo_token_losses(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float,
    clip_high: float,
) -> TokenLosses:
    """GMPO: maximise the geometric mean of token ratios, clipped per token in log space.

    Zhao et al. 2025, https://arxiv.org/abs/2507.20673, the J_GMPO objective (Sec. 3)
    `(1/G) sum_i (prod_t |min(r_it A_i, clip(r_it, e^-clip_low, e^clip_high) A_i)|)^(1/|o_i|) sgn(A_i)`,
    computed as the authors' code does, in log space:
    `l_it = sgn(A_i) * min(sgn(A_i) log r_it, sgn(A_i) clip(log r_it, -clip_low, clip_high))`,
    `loss_i = -A_i * exp(mean_t l_it)`. The sequence loss is placed on each of its tokens, so
    seq-mean-token-mean aggregation gives exactly the paper's `(1/G) sum_i`.
    """
    log_ratio = (logprobs - old_logprobs).clamp(-20.0, 20.0)
    sign = advantages.sign().unsqueeze(-1)  # [N, 1]
    clipped = log_ratio.clamp(-clip_low, clip_high)
    pessimistic = sign * torch.minimum(sign * log_ratio, sign * clipped)  # [N, T]
    seq_ratio = _masked_mean_rows(pessimistic, mask).exp()  # [N]
    losses = (-advantages * seq_ratio).unsqueeze(-1).expand_as(log_ratio)
    a = advantages.unsqueeze(-1)
    low, high = (a < 0) & (log_ratio < -clip_low), (a > 0) & (log_ratio > clip_high)  # where the min picks the clip
    geometric_ratio = _masked_mean_rows(log_ratio, mask).exp().unsqueeze(-1).expand_as(log_ratio)
    return TokenLosses(losses, low, high, geometric_ratio.detach())


def _masked_mean_rows(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over each row's masked tokens [N, T] -> [N]; 0 for an empty row."""
    return torch.where(mask, values, 0.0).sum(-1) / mask.sum(-1).clamp(min=1)


class _PolicyLoss:
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
            "actor/clip_frac_low": _masked_mean(out.clipped_low.float(), mask),
            "actor/clip_frac_high": _masked_mean(out.clipped_high.float(), mask),
            "actor/approx_kl": _masked_mean(token_kl(old_logprobs, logprobs.detach(), "k3"), mask),
            "actor/ratio_mean": _masked_mean(out.ratio, mask),
        }
        if out.clipped_dual is not None:
            metrics["actor/clip_frac_dual"] = _masked_mean(out.clipped_dual.float(), mask)
        loss = pg_loss
        if ref_logprobs is not None:
            kl = token_kl(logprobs, ref_logprobs.float().detach(), self.kl_estimator)
            loss = loss + self.kl_coef * aggregate(kl, mask, self.aggregation, norm)
            metrics["actor/kl"] = _masked_mean(kl.detach(), mask)
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


@ALGORITHMS.register("grpo")
class GRPOLoss(_PolicyLoss):
    """`algorithm=grpo`: token-level PPO clip (arXiv 1707.06347) as in GRPO (DeepSeekMath, arXiv
    2402.03300), with dual clip (arXiv 1912.09729) for negative advantages; `clip_c=None` disables it.
    Token-mean aggregation by default (verl's default and the CLIPO paper's setting)."""

    def __init__(
        self,
        clip_low: float = 0.2,
        clip_high: float = 0.2,
        clip_c: float | None = 3.0,
        aggregation: str = "token-mean",
        kl_coef: float = 0.0,
        kl_estimator: str = "k3",
    ) -> None:
        super().__init__(clip_low, clip_high, aggregation, kl_coef, kl_estimator)
        if clip_c is not None and clip_c <= 1.0 + clip_high:
            raise ValueError(f"clip_c must exceed 1 + clip_high = {1 + clip_high} (None disables it), got {clip_c}")
        self.clip_c = clip_c

    def token_losses(self, logprobs, old_logprobs, advantages, mask) -> TokenLosses:  # noqa: ANN001
        return ppo_token_losses(logprobs, old_logprobs, advantages, self.clip_low, self.clip_high, self.clip_c)


@ALGORITHMS.register("dapo")
class DAPOLoss(GRPOLoss):
    """`algorithm=dapo`: DAPO (Yu et al. 2025, arXiv 2503.14476): the clipped objective with
    clip-higher (0.2 / 0.28) and token-mean aggregation; dual clip 10.0 as verl's DAPO recipe.

    The module reads the sampling-side settings (see `clipo.dapo`): `dynamic_sampling` (drop
    zero-variance groups and refill, at most `max_refill_batches` extra generation rounds, verl's
    default 10), `overlong_buffer` (tokens before the length limit where the soft overlong penalty
    starts; 0 disables; the paper uses 4096 of 20480) and `overlong_penalty` (its maximum, 1.0).
    """

    def __init__(
        self,
        clip_low: float = 0.2,
        clip_high: float = 0.28,
        clip_c: float | None = 10.0,
        aggregation: str = "token-mean",
        kl_coef: float = 0.0,
        kl_estimator: str = "k3",
        dynamic_sampling: bool = True,
        max_refill_batches: int = 10,
        overlong_buffer: int = 0,
        overlong_penalty: float = 1.0,
    ) -> None:
        super().__init__(clip_low, clip_high, clip_c, aggregation, kl_coef, kl_estimator)
        if max_refill_batches < 0 or overlong_buffer < 0 or overlong_penalty < 0:
            raise ValueError(
                "max_refill_batches, overlong_buffer and overlong_penalty must be >= 0, got "
                f"{max_refill_batches}, {overlong_buffer}, {overlong_penalty}"
            )
        self.dynamic_sampling, self.max_refill_batches = dynamic_sampling, max_refill_batches
        self.overlong_buffer, self.overlong_penalty = overlong_buffer, overlong_penalty


@ALGORITHMS.register("gspo")
class GSPOLoss(_PolicyLoss):
    """`algorithm=gspo`: sequence-level ratio (arXiv 2507.18071), see `gspo_token_losses`.
    Defaults are the paper's clip ranges 3e-4 / 4e-4 and seq-mean-token-mean aggregation."""

    def __init__(
        self,
        clip_low: float = 3e-4,
        clip_high: float = 4e-4,
        aggregation: str = "seq-mean-token-mean",
        kl_coef: float = 0.0,
        kl_estimator: str = "k3",
    ) -> None:
        super().__init__(clip_low, clip_high, aggregation, kl_coef, kl_estimator)

    def token_losses(self, logprobs, old_logprobs, advantages, mask) -> TokenLosses:  # noqa: ANN001
        return gspo_token_losses(logprobs, old_logprobs, advantages, mask, self.clip_low, self.clip_high)


@ALGORITHMS.register("gmpo")
class GMPOLoss(_PolicyLoss):
    """`algorithm=gmpo`: geometric-mean ratio (arXiv 2507.20673), see `gmpo_token_losses`.
    `clip_low`/`clip_high` are in log space (paper: (-0.4, 0.4)); seq-mean-token-mean by default."""

    def __init__(
        self,
        clip_low: float = 0.4,
        clip_high: float = 0.4,
        aggregation: str = "seq-mean-token-mean",
        kl_coef: float = 0.0,
        kl_estimator: str = "k3",
    ) -> None:
        super().__init__(clip_low, clip_high, aggregation, kl_coef, kl_estimator)

    def token_losses(self, logprobs, old_logprobs, advantages, mask) -> TokenLosses:  # noqa: ANN001
        return gmpo_token_losses(logprobs, old_logprobs, advantages, mask, self.clip_low, self.clip_high)
