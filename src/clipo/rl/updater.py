"""The second half of an RL step: PPO-style policy updates on one trajectory.

`ppo.epochs` passes over mini-batches (one optimizer update each), gradient accumulation over
micro-batches (one forward each), losses normalised over the whole update (`StepNormalizer`),
gradient clipping, and non-finite updates skipped. pi_old, the importance weights and the
reference's log-probs come with the trajectory. In CLIPO's loss mode the contrastive term joins
each micro-batch's loss and the head steps with each update. Shapes: `N` rollouts, `T` tokens.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Callable

import torch

from clipo.algorithms import StepNormalizer
from clipo.contrastive.modes import ContrastiveLossTerm
from clipo.distributed import sum_over_ranks, world
from clipo.interfaces import PolicyLoss
from clipo.rl.batching import UpdateBatching
from clipo.rl.collector import Trajectory
from clipo.rollout.forward import forward_responses
from clipo.run.strategies import full_tensor
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
        forward_model: torch.nn.Module | None = None,
    ) -> None:
        self.forward_model = policy if forward_model is None else forward_model
        self.policy, self.algorithm, self.batching, self.contrastive = policy, algorithm, batching, contrastive
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
            history: dict[str, list[torch.Tensor]] = defaultdict(list)
            for _ in range(self.batching.epochs):
                for start in range(0, n, mini):
                    index = torch.arange(start, start + mini, device=batch.advantages.device)
                    for key, value in self._update_once(batch, index, micro, optimizer, backward).items():
                        history[key].extend(value)
            history["numerics/skipped_updates"].append(torch.tensor(float(self.skipped_updates)))
            return {k: torch.stack(v).mean() for k, v in history.items()} | batch.old.metrics()

    def _update_once(
        self, batch: Trajectory, mini_index: torch.Tensor, micro: int, optimizer: Any,
        backward: Callable[[torch.Tensor], None],
    ) -> dict[str, list[torch.Tensor]]:
        """One optimizer update over the mini-batch `mini_index`, accumulated over its micro-batches."""
        norm = self.step_normalizer(batch.rollouts.response_mask[mini_index])
        history: dict[str, list[torch.Tensor]] = defaultdict(list)
        whole_groups = self.contrastive is not None
        for index in self.batching.micro_batches(batch.rollouts, mini_index, micro, whole_groups):
            loss, metrics = self._micro_batch_loss(batch, index, norm, len(mini_index))
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
        self, batch: Trajectory, index: torch.Tensor, norm: StepNormalizer, mini: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of the rollouts `index` (its share of the update's) and its metrics."""
        part = batch.rollouts.select(index)
        out = forward_responses(self.forward_model, part, self.temperature, self.hidden_layer, with_entropy=True,
                                packed=self.batching.padding_free, varlen=self.batching.varlen)
        old, weights = batch.old.for_micro_batch(index, part, out.logprobs)
        ref = None if batch.ref_logprobs is None else batch.ref_logprobs[index]
        loss, metrics = self.algorithm(out.logprobs, old, batch.advantages[index], part.response_mask, norm, ref, weights)
        if self.contrastive is not None:
            term, contrastive_metrics = self.contrastive(
                out.hidden, part.hidden_mask, batch.correct[index], part.groups, len(index), mini
            )
            loss = loss + term
            metrics |= contrastive_metrics
        metrics["actor/entropy"] = out.entropy[part.response_mask].mean()
        return loss, metrics

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
        if self.engine_grad_norm is not None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return self.engine_grad_norm().detach().float()
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
