"""pi_old, the reference's log-probs and CLIPO's hidden states: the collector's no-grad passes.

The PPO ratio needs pi_old, the policy that sampled, before any update. When a step makes one
optimizer update, the update's own forward *is* pi_old (detached): no extra pass, and the
trajectory carries no old log-probs. When it makes several (`ppo.epochs > 1` or mini-batches),
pi_old is taken in a no-grad pass before the first. An engine that returns no hidden states
(vLLM) gets CLIPO's from the same pass. The builders plan all of this once (`LogprobPasses`); an
engine other than the trainer samples from slightly different probabilities, and
`ImportanceCorrection` re-weights for that where the loss is computed (the updater).
Shapes: `N` rollouts, `T` response tokens, `D` hidden size.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch

from clipo.algorithms.rollout_correction import LEVELS, MODES, importance_weights
from clipo.rl.batching import UpdateBatching
from clipo.rollout.batch import RolloutBatch


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
    """The sampler/trainer mismatch over a batch with the engine's log-probs (reported even with the correction off)."""
    measure = correction or ImportanceCorrection(cap=float("inf"))
    return measure(old, rollouts.sampling_logprobs, rollouts.response_mask)[1]


class PassResults(NamedTuple):
    old_logprobs: torch.Tensor | None  # [N, T] pi_old, when the update reuses the batch
    ref_logprobs: torch.Tensor | None  # [N, T] the reference's, when the loss has a KL term
    hidden: torch.Tensor | None  # [N, T, D] CLIPO's states, when the engine gave none
    passes: int  # forward passes over the batch that ran (FLOPs accounting)


class LogprobPasses:
    """The collector's no-grad passes over a sampled batch, as the builders planned them.

    Args:
        policy: the policy before this step's update.
        temperature: the sampling temperature the log-probs are taken at.
        batching: micro-batches and the training forward's plan (the update's own).
        old_before_update: the update reuses the batch, so pi_old is taken here.
        hidden_layer: the layer reward shaping pools, taken here because the engine gives no hidden states; None.
        reference: the frozen reference model when the loss has a KL term, else None.
        reference_context: entered around the reference's pass (LoRA: the policy's `disable_adapter`).
    """

    def __init__(
        self, policy: torch.nn.Module, temperature: float, batching: UpdateBatching, old_before_update: bool,
        hidden_layer: int | None = None, reference: torch.nn.Module | None = None,
        reference_context: Callable[[], AbstractContextManager] = nullcontext,
    ) -> None:
        self.policy, self.temperature, self.batching = policy, temperature, batching
        self.old_before_update, self.hidden_layer = old_before_update, hidden_layer
        self.reference, self.reference_context = reference, reference_context

    def __call__(self, rollouts: RolloutBatch, update: bool = True) -> PassResults:
        """The planned passes; without an `update` (CLIPO's head warm-up) only the hidden states."""
        take_old = update and self.old_before_update
        old = hidden = reference = None
        passes = 0
        if self.hidden_layer is not None or take_old:
            old, hidden = self._forward(self.policy, rollouts, self.hidden_layer, with_logprobs=take_old)
            passes += 1
        if update and self.reference is not None:
            with self.reference_context():
                reference, _ = self._forward(self.reference, rollouts, None)
            passes += 1
        return PassResults(old, reference, hidden, passes)

    @torch.no_grad()
    def _forward(self, model: torch.nn.Module, rollouts: RolloutBatch, hidden_layer: int | None,
                 with_logprobs: bool = True) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(log-probs [N, T], or None without `with_logprobs`; `hidden_layer`'s states [N, T, D] or None)."""
        index = torch.arange(len(rollouts.responses), device=rollouts.sequences.device)
        micro = self.batching.micro_batch_size or len(index)
        logprobs = torch.zeros(rollouts.response_mask.shape, device=index.device) if with_logprobs else None
        hidden = None
        for micro_batch in self.batching.micro_batches(rollouts, index, micro):
            out = self.batching.forward(model, rollouts.select(micro_batch.index), self.temperature, hidden_layer,
                                        with_logprobs=with_logprobs, head_chunks=micro_batch.head_chunks)
            if micro_batch.stand_in:  # ran only to keep the ranks' collectives in step
                continue
            if with_logprobs:
                logprobs[micro_batch.index] = out.logprobs
            if hidden_layer is not None:
                if hidden is None:
                    hidden = out.hidden.new_zeros((*rollouts.response_mask.shape, out.hidden.shape[-1]))
                hidden[micro_batch.index] = out.hidden
        return logprobs, hidden
