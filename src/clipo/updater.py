"""The second half of an RL step: PPO-style policy updates on one collected batch.

`ppo_epochs` passes over mini-batches (one optimizer update each), gradient accumulation over
micro-batches (one forward each), losses normalised over the whole update (`StepNormalizer`),
gradient clipping, and non-finite updates skipped. In CLIPO's loss mode the contrastive term
joins each micro-batch's loss and the head steps with each update. Shapes: `N` rollouts, `T`
response tokens.
"""

from __future__ import annotations

import math
from collections import defaultdict
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Callable

import torch

from clipo.algorithms import StepNormalizer
from clipo.algorithms.rollout_correction import truncated_importance_weights
from clipo.collector import CollectedBatch
from clipo.contrastive.steps import ContrastiveLossTerm
from clipo.distributed import max_over_ranks, sum_over_ranks, world
from clipo.interfaces import PolicyLoss
from clipo.rollout.batch import RolloutBatch
from clipo.rollout.forward import forward_responses
from clipo.rollout.packing import pack_by_tokens
from clipo.strategies import full_tensor
from clipo.timing import PhaseTimer


class PolicyUpdater:
    """Optimises the policy on a `CollectedBatch`.

    Args:
        policy: the model being trained.
        algorithm: the policy-gradient loss (`algorithm=`).
        temperature: the sampling temperature the log-probs are taken at.
        max_len: the generation budget (Dr. GRPO's aggregation constant).
        epochs, mini_batch_size, micro_batch_size: `ppo.*` (mini over all processes, micro per process).
        max_tokens_per_micro_batch: `ppo.*`: micro-batches packed by this token budget instead (per process).
        max_grad_norm: clipping bound (None or 0: no clipping).
        max_nonfinite_updates: skipped updates in a row that stop the run.
        reference: the frozen reference model, when the loss has a KL term.
        reference_context: entered around the reference's pass (LoRA: the policy's `disable_adapter`,
            with `reference` the policy itself).
        contrastive: CLIPO's loss-mode term, or None.
        hidden_layer: the layer the training forward returns for `contrastive`.
        importance_cap: truncated importance sampling's cap (None: off). With one optimizer step on
            the batch and no weights from the collector, each micro-batch's weights come from its own
            forward's log-probs (detached: they are pi_old), so no pass of its own is needed.
    """

    def __init__(
        self,
        policy: torch.nn.Module,
        algorithm: PolicyLoss,
        temperature: float,
        max_len: int,
        epochs: int = 1,
        mini_batch_size: int | None = None,
        micro_batch_size: int | None = None,
        max_tokens_per_micro_batch: int | None = None,
        max_grad_norm: float | None = 1.0,
        max_nonfinite_updates: int = 3,
        reference: torch.nn.Module | None = None,
        reference_context: Callable[[], AbstractContextManager] = nullcontext,
        contrastive: ContrastiveLossTerm | None = None,
        hidden_layer: int | None = None,
        importance_cap: float | None = None,
    ) -> None:
        self.policy, self.algorithm, self.reference, self.reference_context = policy, algorithm, reference, reference_context
        self.temperature, self.max_len = temperature, max_len
        self.epochs, self.mini_batch_size, self.micro_batch_size = epochs, mini_batch_size, micro_batch_size
        self.max_tokens_per_micro_batch = max_tokens_per_micro_batch
        self.max_grad_norm, self.max_nonfinite_updates = max_grad_norm, max_nonfinite_updates
        self.contrastive, self.hidden_layer, self.importance_cap = contrastive, hidden_layer, importance_cap
        self.skipped_updates = self.nonfinite_in_a_row = 0
        # set under DeepSpeed (`clipo.strategies.grad_norm_after_step`): the engine clips in its own step
        self.grad_norm_after_step: Callable[[], torch.Tensor] | None = None

    def batch_sizes(self, n: int) -> tuple[int, int]:
        """(mini, micro): this rank's rollouts per optimizer update and per forward pass."""
        mini = self.mini_batch_size // world()[1] if self.mini_batch_size else n  # this rank's share of an update
        return mini, min(self.micro_batch_size or mini, mini)

    def reuses_batch(self, n: int) -> bool:
        """Whether the `n` rollouts of this rank get several optimizer steps (then pi_old needs a pass)."""
        return self.epochs > 1 or self.batch_sizes(n)[0] < n

    def update(
        self, batch: CollectedBatch, optimizer: Any, backward: Callable[[torch.Tensor], None], timer: PhaseTimer
    ) -> dict[str, torch.Tensor]:
        """All of the step's updates; returns metrics averaged over micro-batches (or updates)."""
        with timer("logprobs"):
            old_logprobs, ref_logprobs = self.old_and_reference_logprobs(batch.rollouts, batch.old_logprobs)
        with timer("update"):
            return self.optimise(batch, old_logprobs, ref_logprobs, optimizer, backward)

    def old_and_reference_logprobs(
        self, rollouts: RolloutBatch, collected_old: torch.Tensor | None = None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Log-probs [N, T] of the sampling policy (only when there are several updates: with one, the
        current log-probs, detached, are equal and cost no extra pass; `collected_old` when the collector's
        training forward took them already) and of the reference (when loaded)."""
        n = len(rollouts.responses)
        mini, micro = self.batch_sizes(n)
        if not self.reuses_batch(n):
            old = None
        else:
            old = collected_old if collected_old is not None else self._logprobs(self.policy, rollouts, micro)
        ref = None
        if self.reference is not None:
            with self.reference_context():
                ref = self._logprobs(self.reference, rollouts, micro)
        return old, ref

    def optimise(
        self,
        batch: CollectedBatch,
        old_logprobs: torch.Tensor | None,
        ref_logprobs: torch.Tensor | None,
        optimizer: Any,
        backward: Callable[[torch.Tensor], None],
    ) -> dict[str, torch.Tensor]:
        """`epochs` passes over mini-batches, gradient accumulation over micro-batches."""
        rollouts, advantages, correct, weights = batch.rollouts, batch.advantages, batch.correct, batch.importance_weights
        device = advantages.device
        n = len(rollouts.responses)
        mini, micro = self.batch_sizes(n)
        history: dict[str, list[torch.Tensor]] = defaultdict(list)
        # one step on the batch: the importance weights' pi_old is each micro-batch's own forward
        own_weights = (weights is None and old_logprobs is None and self.importance_cap is not None
                       and rollouts.sampling_logprobs is not None)
        seen_old = torch.zeros(rollouts.response_mask.shape, device=device) if own_weights else None
        for _ in range(self.epochs):
            for start in range(0, n, mini):
                mini_index = torch.arange(start, start + mini, device=device)
                norm = self.step_normalizer(rollouts.response_mask[mini_index])
                update_loss = update_pg_loss = torch.zeros((), device=device)
                for micro_index in self.micro_batches(rollouts, mini_index, micro, whole_groups=self.contrastive is not None):
                    part = rollouts.select(micro_index)
                    out = forward_responses(self.policy, part, self.temperature, self.hidden_layer, with_entropy=True)
                    old = out.logprobs.detach() if old_logprobs is None else old_logprobs[micro_index]
                    ref = None if ref_logprobs is None else ref_logprobs[micro_index]
                    token_weights = None if weights is None else weights[micro_index]
                    if own_weights:
                        token_weights, _ = truncated_importance_weights(
                            old, part.sampling_logprobs, part.response_mask, self.importance_cap)
                        seen_old[micro_index] = old
                    loss, step_metrics = self.algorithm(
                        out.logprobs, old, advantages[micro_index], part.response_mask, norm, ref, token_weights
                    )
                    if self.contrastive is not None:
                        term, contrastive_metrics = self.contrastive(
                            out.hidden, part.hidden_mask, correct[micro_index], part.groups, len(micro_index), mini
                        )
                        loss = loss + term
                        step_metrics |= contrastive_metrics
                    backward(loss)
                    update_loss = update_loss + loss.detach().float()
                    update_pg_loss = update_pg_loss + step_metrics.pop("actor/pg_loss").float()
                    step_metrics["actor/entropy"] = out.entropy[part.response_mask].mean()
                    for key, value in step_metrics.items():
                        history[key].append(value.detach().float())
                # micro-batch losses are shares of the update's loss (step-normalised): they add up
                history["actor/loss"].append(update_loss)
                history["actor/pg_loss"].append(update_pg_loss)
                history["actor/grad_norm"].append(self.clip_and_step(optimizer))
                if self.contrastive is not None:
                    self.contrastive.after_update()
        history["numerics/skipped_updates"].append(torch.tensor(float(self.skipped_updates)))
        metrics = {k: torch.stack(v).mean() for k, v in history.items()}
        if own_weights:  # the mismatch over the whole batch, as the collector reports it otherwise
            _, correction = truncated_importance_weights(
                seen_old, rollouts.sampling_logprobs, rollouts.response_mask, self.importance_cap)
            metrics |= correction
        return metrics

    def micro_batches(self, rollouts: RolloutBatch, index: torch.Tensor, micro: int,
                      whole_groups: bool = False) -> list[torch.Tensor]:
        """The forward passes over `index`: slices of `micro` rollouts, or packed by the token budget
        (whole groups when the contrastive loss, taken per forward pass, compares a group's rollouts)."""
        if self.max_tokens_per_micro_batch is None:
            return list(index.split(micro))
        lengths = rollouts.attention_mask[index].sum(-1)  # [n] prompt + response tokens
        budget, groups = self.max_tokens_per_micro_batch, rollouts.groups[index]
        packed = pack_by_tokens(lengths, budget, groups, whole_groups)
        # every rank runs as many backward passes (each one synchronises gradients under DDP)
        count = int(max_over_ranks(torch.tensor(len(packed), device=index.device)))
        if count > len(packed):
            packed = pack_by_tokens(lengths, budget, groups, whole_groups, min_batches=count)
        return [index[part.to(index.device)] for part in packed]

    def step_normalizer(self, mask: torch.Tensor) -> StepNormalizer:
        """Aggregation denominators of one update: the counts of the global mini-batch (all ranks),
        divided by the world size because data parallelism averages the ranks' gradients, so the
        average of the ranks' losses is the loss one process would compute on the global batch."""
        mask = mask.bool()
        counts = torch.stack([mask.sum(), mask.any(-1).sum()]).double()
        tokens, sequences = (sum_over_ranks(counts).clamp(min=1) / world()[1]).tolist()
        return StepNormalizer(tokens=tokens, sequences=sequences, max_len=self.max_len)

    def clip_and_step(self, optimizer: Any) -> torch.Tensor:
        """Clip and step; a non-finite gradient skips the update (counted, and fatal after too many in a row)."""
        if self.grad_norm_after_step is not None:  # DeepSpeed: non-finite steps are its loss scaler's to skip
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return self.grad_norm_after_step().detach().float()
        params = [p for p in self.policy.parameters() if p.grad is not None]
        max_norm = self.max_grad_norm if self.max_grad_norm else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm) if params else torch.tensor(0.0)
        grad_norm = full_tensor(grad_norm)  # FSDP2: a DTensor
        if torch.isfinite(grad_norm):
            optimizer.step()
            self.nonfinite_in_a_row = 0
        else:
            self.skipped_updates += 1
            self.nonfinite_in_a_row += 1
            if self.nonfinite_in_a_row >= self.max_nonfinite_updates:
                raise FloatingPointError(
                    f"{self.nonfinite_in_a_row} updates in a row had a non-finite loss or gradient "
                    f"({self.skipped_updates} skipped in all); stopping. Lower optimizer.lr, use trainer.precision=32 "
                    "or bf16-mixed instead of 16-mixed, or raise ppo.max_nonfinite_updates to tolerate more."
                )
        optimizer.zero_grad(set_to_none=True)
        return grad_norm.detach().float()

    @torch.no_grad()
    def _logprobs(self, model: torch.nn.Module, rollouts: RolloutBatch, micro: int) -> torch.Tensor:
        index = torch.arange(len(rollouts.responses), device=rollouts.sequences.device)
        logprobs = torch.zeros(rollouts.response_mask.shape, device=index.device)
        for part in self.micro_batches(rollouts, index, micro):
            logprobs[part] = forward_responses(model, rollouts.select(part), self.temperature).logprobs
        return logprobs
