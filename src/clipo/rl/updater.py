"""The second half of an RL step: PPO-style policy updates on one trajectory.

`ppo.epochs` passes over mini-batches (one optimizer update each), gradient accumulation over
micro-batches (one forward each, as the training forward's plan runs it), losses normalised over
the whole update (`StepNormalizer`), gradient clipping, and non-finite updates skipped. pi_old
comes with the trajectory when it was taken before the update, else it is each micro-batch's own
forward, detached; the importance weights against the sampling engine are computed here, with the
loss. In CLIPO's loss mode the contrastive term joins each micro-batch's loss and the head steps
with each update. Shapes: `N` rollouts, `T` tokens.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Callable

import torch

from clipo.algorithms import LossInputs, StepNormalizer, mixed_group_count
from clipo.contrastive.modes import ContrastiveLossTerm
from clipo.distributed import sum_over_ranks, world
from clipo.interfaces import PolicyLoss
from clipo.rl.batching import MicroBatch, UpdateBatching
from clipo.rl.collector import Trajectory
from clipo.rl.old_policy import ImportanceCorrection, mismatch_metrics
from clipo.run.timing import PhaseTimer


class PolicyUpdater:
    """Optimises the policy on a `Trajectory`.

    Args:
        policy: the model being trained.
        algorithm: the policy-gradient loss (`algorithm=`).
        batching: epochs, mini- and micro-batches (`ppo.*`).
        temperature: the sampling temperature the log-probs are taken at.
        max_len: the generation budget (Dr. GRPO's aggregation constant).
        max_grad_norm: clipping bound (None or 0: no clipping).
        max_nonfinite_updates: skipped updates in a row that stop the run.
        contrastive: CLIPO's loss-mode term, or None.
        sampler_logprobs: the engine reports its log-probs (vLLM): the mismatch is measured, and
            `correction` (`rollout.importance_sampling`, None when off) re-weights for it.
        sharded_grad_norm: the gradient norm is a DTensor shard to make whole (FSDP2).
        forward_model: what the forward/backward runs on (None: `policy`): the policy's bf16 working copy,
            whose gradients reach the policy's float32 `.grad` (`clipo.run.working_copy`).
    """

    def __init__(
        self,
        policy: torch.nn.Module,
        algorithm: PolicyLoss,
        batching: UpdateBatching,
        temperature: float,
        max_len: int,
        max_grad_norm: float | None = 1.0,
        max_nonfinite_updates: int = 3,
        contrastive: ContrastiveLossTerm | None = None,
        sampler_logprobs: bool = False,
        correction: ImportanceCorrection | None = None,
        sharded_grad_norm: bool = False,
        forward_model: torch.nn.Module | None = None,
    ) -> None:
        self.forward_model = policy if forward_model is None else forward_model
        self.policy, self.algorithm, self.batching, self.contrastive = policy, algorithm, batching, contrastive
        self.sampler_logprobs, self.correction = sampler_logprobs, correction if sampler_logprobs else None
        self.sharded_grad_norm = sharded_grad_norm
        self.temperature, self.max_len = temperature, max_len
        self.max_grad_norm, self.max_nonfinite_updates = max_grad_norm, max_nonfinite_updates
        self.hidden_layer = None if contrastive is None else contrastive.hidden_layer
        self.skipped_updates = self.nonfinite_in_a_row = 0
        self.engine_grad_norm: Callable[[], torch.Tensor] | None = None

    def use_engine_clipping(self, grad_norm: Callable[[], torch.Tensor] | None) -> None:
        """Under DeepSpeed the engine clips (`ppo.max_grad_norm`) and skips non-finite steps (its loss
        scaler) in its own step; `grad_norm` reads the norm it took (`clipo.run.strategies`). None: clip here."""
        self.engine_grad_norm = grad_norm

    def state_dict(self) -> dict[str, int]:
        return {"skipped_updates": self.skipped_updates}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.skipped_updates = int(state.get("skipped_updates", 0))

    def update(
        self, batch: Trajectory, optimizer: Any, backward: Callable[[torch.Tensor], None], timer: PhaseTimer
    ) -> dict[str, torch.Tensor]:
        """`epochs` passes over mini-batches; metrics averaged over micro-batches (or updates)."""
        with timer("update"):
            n = len(batch.rollouts.responses)
            mini, micro = self.batching.sizes(n, world()[1])
            # pi_old as the loss used it: taken before the update, or filled in by the on-policy forwards
            old_seen = batch.old_logprobs
            if old_seen is None:
                old_seen = torch.zeros(batch.rollouts.response_mask.shape, device=batch.advantages.device)
            history: dict[str, list[torch.Tensor]] = defaultdict(list)
            for _ in range(self.batching.epochs):
                for start in range(0, n, mini):
                    index = torch.arange(start, start + mini, device=batch.advantages.device)
                    for key, value in self._update_once(batch, index, micro, optimizer, backward, old_seen).items():
                        history[key].extend(value)
            history["numerics/skipped_updates"].append(torch.tensor(float(self.skipped_updates)))
            metrics = {k: torch.stack(v).mean() for k, v in history.items()}
            if self.sampler_logprobs:
                metrics |= mismatch_metrics(old_seen, batch.rollouts, self.correction)
            return metrics

    def _update_once(
        self, batch: Trajectory, mini_index: torch.Tensor, micro: int, optimizer: Any,
        backward: Callable[[torch.Tensor], None], old_seen: torch.Tensor,
    ) -> dict[str, list[torch.Tensor]]:
        """One optimizer update over the mini-batch `mini_index`, accumulated over its micro-batches."""
        norm = self.step_normalizer(batch.rollouts.response_mask[mini_index], batch.rollouts.groups[mini_index],
                                    batch.correct[mini_index])
        history: dict[str, list[torch.Tensor]] = defaultdict(list)
        for micro_batch in self.batching.micro_batches(batch.rollouts, mini_index, micro):
            loss, metrics = self._micro_batch_loss(batch, micro_batch, norm, len(mini_index), old_seen)
            if micro_batch.stand_in:  # the same collectives as the other ranks, no contribution
                backward(loss * 0.0)
                continue
            backward(loss)
            metrics["actor/loss"] = loss.detach().float()
            for key, value in metrics.items():
                history[key].append(value.detach().float())
        # micro-batch losses are shares of the update's loss (step-normalised): they add up
        history["actor/loss"] = [torch.stack(history["actor/loss"]).sum()]
        history["actor/pg_loss"] = [torch.stack(history["actor/pg_loss"]).sum()]
        history["actor/grad_norm"] = [self.clip_and_step(optimizer)]
        if self.contrastive is not None:
            self.contrastive.after_update()
        return history

    def _micro_batch_loss(
        self, batch: Trajectory, micro_batch: MicroBatch, norm: StepNormalizer, mini: int, old_seen: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of the micro-batch's rollouts (its share of the update's) and its metrics."""
        index = micro_batch.index
        part = batch.rollouts.select(index)
        out = self.batching.forward(self.forward_model, part, self.temperature, self.hidden_layer, with_entropy=True,
                                    head_chunks=micro_batch.head_chunks)
        if batch.old_logprobs is None:  # on-policy: this forward is pi_old
            old = out.logprobs.detach()
            if not micro_batch.stand_in:
                old_seen[index] = old
        else:
            old = batch.old_logprobs[index]
        weights = None if self.correction is None else self.correction(old, part.sampling_logprobs, part.response_mask)[0]
        ref = None if batch.ref_logprobs is None else batch.ref_logprobs[index]
        inputs = LossInputs(out.logprobs, old, batch.advantages[index], part.response_mask, ref, weights,
                            part.sampling_logprobs, out.entropy, part.groups, batch.correct[index],
                            (batch.shaped_rewards - batch.rewards)[index], batch.step)
        loss, metrics = self.algorithm.loss(inputs, norm)
        if self.contrastive is not None:
            term, contrastive_metrics = self.contrastive(
                out.hidden, part.hidden_mask, batch.correct[index], part.groups, len(index), mini
            )
            loss = loss + term
            metrics |= contrastive_metrics
        metrics["actor/entropy"] = out.entropy[part.response_mask].mean()
        return loss, metrics

    def step_normalizer(self, mask: torch.Tensor, groups: torch.Tensor | None = None,
                        correct: torch.Tensor | None = None) -> StepNormalizer:
        """Aggregation denominators of one update: the counts of the global mini-batch (all ranks; a group
        lives on one rank), divided by the world size because data parallelism averages the ranks'
        gradients, so the average of the ranks' losses is the loss one process would compute on the global
        batch. `groups` and `correct` count the groups with both labels (ConSPO's normaliser)."""
        mask = mask.bool()
        mixed = torch.tensor(0 if groups is None else mixed_group_count(groups, correct), device=mask.device)
        counts = torch.stack([mask.sum(), mask.any(-1).sum(), mixed]).double()
        tokens, sequences, mixed_groups = (sum_over_ranks(counts).clamp(min=1) / world()[1]).tolist()
        return StepNormalizer(tokens=tokens, sequences=sequences, max_len=self.max_len, mixed_groups=mixed_groups)

    def clip_and_step(self, optimizer: Any) -> torch.Tensor:
        """Clip and step; a non-finite gradient skips the update (counted, and fatal after too many in a row)."""
        if self.engine_grad_norm is not None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return self.engine_grad_norm().detach().float()
        params = [p for p in self.policy.parameters() if p.grad is not None]
        max_norm = self.max_grad_norm if self.max_grad_norm else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm) if params else torch.tensor(0.0)
        if self.sharded_grad_norm and params:
            grad_norm = grad_norm.full_tensor()
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
