"""pi_old, the reference's log-probs and the sampler correction: the log-prob part of a trajectory.

The PPO ratio needs pi_old, the policy that sampled, before any update. When a step makes one
optimizer update, the update's own forward *is* pi_old (detached): no extra pass (`OnPolicy`). When
it makes several (`ppo.epochs > 1` or mini-batches), pi_old is taken in a no-grad pass before the
first (`TakenOld`). An engine other than the trainer (vLLM) samples from slightly different
probabilities; its log-probs ride on the rollouts and `ImportanceCorrection` re-weights for them.
The builders choose all of this once (`RolloutLogprobs`); the updater asks an `OldPolicy` for each
micro-batch's (pi_old, weights) and never decides. Shapes: `N` rollouts, `T` response tokens.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Callable, Protocol

import torch

from clipo.algorithms.rollout_correction import LEVELS, MODES, importance_weights
from clipo.rl.batching import UpdateBatching
from clipo.rollout.batch import RolloutBatch
from clipo.rollout.forward import forward_responses


@dataclass(frozen=True)
class ImportanceCorrection:
    """`rollout.importance_sampling`: cap, level (token | sequence), mode (truncate | mask), min_ratio."""

    cap: float = 2.0
    level: str = "token"
    mode: str = "truncate"
    min_ratio: float | None = None

    def __post_init__(self) -> None:
        low_ok = self.min_ratio is None or 0 <= self.min_ratio <= 1
        if self.cap < 1 or self.level not in LEVELS or self.mode not in MODES or not low_ok:
            raise ValueError(f"rollout.importance_sampling: cap={self.cap} must be >= 1, level={self.level!r} one of "
                             f"{LEVELS}, mode={self.mode!r} one of {MODES}, "
                             f"min_ratio={self.min_ratio} null or in [0, 1]")

    def __call__(self, old: torch.Tensor, sampling: torch.Tensor, mask: torch.Tensor):
        return importance_weights(old, sampling, mask, self.cap, self.level, self.mode, self.min_ratio)


def mismatch_metrics(old: torch.Tensor, rollouts: RolloutBatch, correction: ImportanceCorrection | None) -> dict:
    """The sampler/trainer mismatch over a batch (reported even with the correction off)."""
    if rollouts.sampling_logprobs is None:
        return {}
    measure = correction or ImportanceCorrection(cap=float("inf"))
    return measure(old, rollouts.sampling_logprobs, rollouts.response_mask)[1]


class OldPolicy(Protocol):
    def for_micro_batch(
        self, index: torch.Tensor, part: RolloutBatch, logprobs: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(pi_old [n, T], importance weights [n, T] or None) of the micro-batch `part` (rows `index`),
        given its current log-probs [n, T]."""

    def metrics(self) -> dict[str, torch.Tensor]:
        """The sampler/trainer mismatch over the batch, once the update has run."""


class TakenOld:
    """pi_old [N, T] taken before the first of several updates, with its importance weights."""

    def __init__(self, logprobs: torch.Tensor, rollouts: RolloutBatch, correction: ImportanceCorrection | None) -> None:
        self.logprobs, self.weights = logprobs, None
        if correction is not None and rollouts.sampling_logprobs is not None:
            self.weights = correction(logprobs, rollouts.sampling_logprobs, rollouts.response_mask)[0]
        self._metrics = mismatch_metrics(logprobs, rollouts, correction)

    def for_micro_batch(self, index, part, logprobs):
        return self.logprobs[index], None if self.weights is None else self.weights[index]

    def metrics(self) -> dict[str, torch.Tensor]:
        return self._metrics


class OnPolicy:
    """One update on the batch: pi_old is each micro-batch's own forward, detached; weights from it."""

    def __init__(self, rollouts: RolloutBatch, correction: ImportanceCorrection | None) -> None:
        self.rollouts, self.correction = rollouts, correction
        measured = rollouts.sampling_logprobs is not None
        self.seen = torch.zeros(rollouts.response_mask.shape, device=rollouts.sequences.device) if measured else None

    def for_micro_batch(self, index, part, logprobs):
        old = logprobs.detach()
        if self.seen is None:
            return old, None
        self.seen[index] = old
        if self.correction is None:
            return old, None
        return old, self.correction(old, part.sampling_logprobs, part.response_mask)[0]

    def metrics(self) -> dict[str, torch.Tensor]:
        return {} if self.seen is None else mismatch_metrics(self.seen, self.rollouts, self.correction)


class RolloutLogprobs:
    """The collector's no-grad passes over a sampled batch, as the builders planned them.

    Args:
        policy: the policy before this step's update.
        temperature: the sampling temperature the log-probs are taken at.
        batching: micro-batches of the passes (the update's own).
        old_before_update: the update reuses the batch, so pi_old is taken here (`TakenOld`).
        correction: the sampler correction (`rollout.importance_sampling`), or None when off.
        hidden_layer: the layer reward shaping pools; taken here when the engine gave none (vllm).
        reference: the frozen reference model when the loss has a KL term, else None.
        reference_context: entered around the reference's pass (LoRA: the policy's `disable_adapter`).
    """

    def __init__(
        self, policy: torch.nn.Module, temperature: float, batching: UpdateBatching, old_before_update: bool,
        correction: ImportanceCorrection | None = None, hidden_layer: int | None = None,
        reference: torch.nn.Module | None = None,
        reference_context: Callable[[], AbstractContextManager] = nullcontext,
    ) -> None:
        self.policy, self.temperature, self.batching = policy, temperature, batching
        self.old_before_update, self.correction, self.hidden_layer = old_before_update, correction, hidden_layer
        self.reference, self.reference_context = reference, reference_context

    def __call__(self, rollouts: RolloutBatch, update: bool = True) -> tuple[OldPolicy, torch.Tensor | None]:
        """(pi_old, reference log-probs [N, T] or None); fills in `rollouts.hidden` when it was missing.
        Without an `update` (CLIPO's head warm-up) only the hidden states are taken."""
        wanted = self.hidden_layer if rollouts.hidden is None else None
        take_old = update and self.old_before_update
        old = None
        if wanted is not None or take_old:
            old, hidden = self._forward(self.policy, rollouts, wanted, with_logprobs=take_old)
            if wanted is not None:
                rollouts.hidden = hidden
        reference = None
        if update and self.reference is not None:
            with self.reference_context():
                reference, _ = self._forward(self.reference, rollouts, None)
        if take_old:
            return TakenOld(old, rollouts, self.correction), reference
        return OnPolicy(rollouts, self.correction), reference

    @torch.no_grad()
    def _forward(self, model: torch.nn.Module, rollouts: RolloutBatch, hidden_layer: int | None,
                 with_logprobs: bool = True):
        """(log-probs [N, T], or None without `with_logprobs`; `hidden_layer`'s states [N, T, D] or None)."""
        index = torch.arange(len(rollouts.responses), device=rollouts.sequences.device)
        micro = self.batching.micro_batch_size or len(index)
        logprobs = torch.zeros(rollouts.response_mask.shape, device=index.device)  # [N, T]
        hidden = None  # [N, T, D]
        for part in self.batching.micro_batches(rollouts, index, micro):
            out = forward_responses(model, rollouts.select(part), self.temperature, hidden_layer,
                                    packed=self.batching.padding_free, varlen=self.batching.varlen,
                                    with_logprobs=with_logprobs)
            if with_logprobs:
                logprobs[part] = out.logprobs
            if hidden_layer is not None:
                hidden = out.hidden.new_zeros((*logprobs.shape, out.hidden.shape[-1])) if hidden is None else hidden
                hidden[part] = out.hidden
        return (logprobs if with_logprobs else None), hidden
