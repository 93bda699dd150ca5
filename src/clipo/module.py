"""The LightningModule: one RL step = rollout, verify, contrastive, advantages, policy update.

It orders calls to parts that are built elsewhere (`clipo.builders`) and holds no
algorithm of its own. Optimisation is manual: an RL step samples, scores and then
makes one or more optimizer updates (PPO mini-batches and epochs).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Any, Callable

import lightning as L
import torch
from torch.nn.parallel import DistributedDataParallel
from transformers import GenerationConfig

from clipo.dapo import overlong_penalty, select_groups
from clipo.distributed import gathered_for_generation, max_over_ranks, mean_over_ranks, sum_over_ranks, world
from clipo.evaluation import SetMetrics, answer_extractor, robustness_table, score_batch
from clipo.policy_loss import StepNormalizer
from clipo.rng import collect_rng_states, set_rng_states
from clipo.rollout import RolloutBatch, concat_rollouts, forward_responses, generate_rollouts
from clipo.rollout.packing import pack_by_tokens


class PhaseTimer:
    """Wall-clock seconds per named phase of a step, and the tokens generated in it."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.generated_tokens = 0

    @contextmanager
    def __call__(self, phase: str):
        start = time.perf_counter()
        yield
        self.seconds[phase] += time.perf_counter() - start


class ClipoModule(L.LightningModule):
    def __init__(
        self,
        policy: torch.nn.Module,
        tokenizer: Any,
        verifier: Callable[[list[str], list[str]], list[float]],
        advantage: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        algorithm: Any,
        contrastive: torch.nn.Module,
        generation: GenerationConfig,
        val_generation: GenerationConfig,
        optimizer: Callable[..., torch.optim.Optimizer],
        head_optimizer: Callable[..., torch.optim.Optimizer],
        group_size: int,
        mini_batch_size: int | None = None,
        micro_batch_size: int | None = None,
        max_tokens_per_micro_batch: int | None = None,
        ppo_epochs: int = 1,
        max_grad_norm: float | None = 1.0,
        max_nonfinite_updates: int = 3,
        reference: torch.nn.Module | None = None,
        val_verifiers: dict[str, Any] | None = None,
        val_twins: dict[str, list[str]] | None = None,
        val_n: int = 1,
        val_ks: list[int] | None = None,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.strict_loading = False  # the frozen reference is not stored in checkpoints
        self.policy, self.tokenizer, self.reference = policy, tokenizer, reference
        self.verifier, self.advantage, self.algorithm = verifier, advantage, algorithm
        self.contrastive = contrastive
        self.generation, self.val_generation = generation, val_generation
        self.optimizer_factory, self.head_optimizer_factory = optimizer, head_optimizer
        self.group_size, self.ppo_epochs, self.max_grad_norm = group_size, ppo_epochs, max_grad_norm
        self.mini_batch_size, self.micro_batch_size = mini_batch_size, micro_batch_size
        self.max_tokens_per_micro_batch = max_tokens_per_micro_batch
        self.head_optimizer: torch.optim.Optimizer | None = None
        self.rl_step = 0  # rollout batches seen (policy updates wait during head warm-up)
        self.max_nonfinite_updates = max_nonfinite_updates
        self.val_verifiers, self.val_twins, self.val_n = val_verifiers or {}, val_twins or {}, val_n
        self.val_metrics = torch.nn.ModuleDict({name: SetMetrics(val_n, val_ks or []) for name in self.val_verifiers})
        self.skipped_updates = self.nonfinite_in_a_row = 0
        if reference is not None:
            reference.requires_grad_(False).eval()
        # The head trains on its own backward pass, outside the policy loss: DDP must not track it
        # (its gradients are averaged across ranks explicitly in `_step_head`).
        names = [f"contrastive.{name}" for name, _ in [*contrastive.named_parameters(), *contrastive.named_buffers()]]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self, names)

    # ---- the RL step -------------------------------------------------------------------
    def training_step(self, batch: list[dict], batch_idx: int) -> None:
        timer = PhaseTimer()
        reward_mode = self.contrastive.enabled and self.contrastive.mode == "reward"
        rollouts, rewards = self._sample_and_verify(batch, timer, capture=self.contrastive.layer if reward_mode else None)
        metrics = self._rollout_metrics(rollouts, rewards)
        if getattr(self.algorithm, "dynamic_sampling", False):
            rollouts, rewards, dapo_metrics = self._keep_informative_groups(rollouts, rewards, len(batch), timer)
            metrics |= dapo_metrics
        correct = rewards > 0.5
        rewards = rewards + self._overlong_penalty(rollouts)
        with timer("contrastive"):
            if reward_mode:
                rewards, contrastive_metrics = self._shape_rewards(rollouts, rewards, correct)
                metrics |= contrastive_metrics
        advantages = self.advantage(rewards, rollouts.groups)
        if not (reward_mode and self.contrastive.policy_waits(self.rl_step)):
            with timer("logprobs"):
                old_logprobs, ref_logprobs = self._old_and_reference_logprobs(rollouts)
            with timer("update"):
                metrics |= self._update_policy(rollouts, advantages, correct, old_logprobs, ref_logprobs)
        self.rl_step += 1
        metrics |= {f"time/{phase}": torch.tensor(s) for phase, s in timer.seconds.items()}
        metrics["time/step"] = torch.tensor(sum(timer.seconds.values()))
        metrics["perf/tokens_per_s"] = torch.tensor(timer.generated_tokens / max(timer.seconds["generate"], 1e-9))
        metrics["train/shaped_reward"] = rewards.mean()
        metrics = self._mean_over_ranks(metrics)
        self.log_dict(metrics, batch_size=len(batch))
        self.log_dict({"reward": metrics["train/reward"], "acc": metrics["train/acc"]}, prog_bar=True, logger=False)

    def _mean_over_ranks(self, metrics: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Step metrics averaged over ranks in one collective (every rank logs the same keys, since
        they depend only on the config), so a DDP run logs global figures, not rank 0's."""
        keys = sorted(metrics)
        values = mean_over_ranks(torch.stack([metrics[k].detach().float().reshape(()).to(self.device) for k in keys]))
        return dict(zip(keys, values))

    def _sample_and_verify(self, batch: list[dict], timer: PhaseTimer, capture: int | None):
        with timer("generate"), gathered_for_generation(self.trainer.strategy):
            rollouts = generate_rollouts(self.policy, self.tokenizer, batch, self.group_size, self.generation, capture)
        with timer("verify"):
            rewards = torch.tensor(self.verifier(rollouts.responses, rollouts.ground_truths), device=self.device)
        timer.generated_tokens += int(rollouts.response_lengths.sum())
        return rollouts, rewards

    def _keep_informative_groups(self, rollouts: RolloutBatch, rewards: torch.Tensor, target: int, timer: PhaseTimer):
        """DAPO dynamic sampling: drop groups whose rewards do not vary, refill from further prompts."""
        limit = self.algorithm.max_refill_batches
        refills = 0
        selection = select_groups(rewards, rollouts.groups, target, refills, limit)
        while selection.need_more:
            more = self.trainer.datamodule.refill_batch()
            capture = None if rollouts.hidden is None else self.contrastive.layer
            more_rollouts, more_rewards = self._sample_and_verify(more, timer, capture)
            rollouts = concat_rollouts([rollouts, more_rollouts], self.tokenizer.pad_token_id)
            rewards = torch.cat([rewards, more_rewards])
            refills += 1
            selection = select_groups(rewards, rollouts.groups, target, refills, limit)
        keep = selection.keep.nonzero().squeeze(-1)
        metrics = {
            "dapo/refills": torch.tensor(float(refills)),
            "dapo/limit_hit": torch.tensor(float(selection.limit_hit)),
            "dapo/informative_group_frac": torch.tensor(selection.num_informative / target),
        }
        return rollouts.select(keep), rewards[keep], metrics

    def _overlong_penalty(self, rollouts: RolloutBatch) -> torch.Tensor | float:
        """DAPO's soft overlong punishment, when the algorithm configures a buffer."""
        buffer = getattr(self.algorithm, "overlong_buffer", 0)
        if not buffer:
            return 0.0
        lengths = rollouts.response_lengths
        return overlong_penalty(lengths, self.generation.max_new_tokens, buffer, self.algorithm.overlong_penalty)

    def _rollout_metrics(self, rollouts: RolloutBatch, rewards: torch.Tensor) -> dict[str, torch.Tensor]:
        grouped = rewards.view(-1, self.group_size)
        stats = self.verifier.stats() if hasattr(self.verifier, "stats") else {}
        return {
            "train/reward": rewards.mean(),
            "train/acc": (rewards > 0.5).float().mean(),
            "train/zero_var_group_frac": (grouped.std(-1, unbiased=False) == 0).float().mean(),
            "train/response_len": rollouts.response_lengths.float().mean(),
            "train/truncation_rate": rollouts.truncated.float().mean(),
            **{f"verifier/{k}": torch.tensor(float(v)) for k, v in stats.items()},
        }

    def _shape_rewards(self, rollouts: RolloutBatch, rewards: torch.Tensor, correct: torch.Tensor):
        """CLIPO reward mode: bonus from the losses before the head's own optimizer step."""
        out = self.contrastive(rollouts.hidden, rollouts.response_mask, correct, rollouts.groups)
        if self.head_optimizer is not None:
            self.head_optimizer.zero_grad(set_to_none=True)
            out.batch_loss.backward()
            self._step_head()
        return rewards + out.bonus.to(rewards.dtype), out.metrics

    def _batch_sizes(self, n: int) -> tuple[int, int]:
        """(mini, micro): this rank's rollouts per optimizer update and per forward pass."""
        mini = self.mini_batch_size // world()[1] if self.mini_batch_size else n  # this rank's share of an update
        return mini, min(self.micro_batch_size or mini, mini)

    def _old_and_reference_logprobs(self, rollouts: RolloutBatch) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Log-probs [N, T] of the sampling policy (only when there are several updates: with one, the
        current log-probs, detached, are equal and cost no extra pass) and of the reference (when loaded)."""
        n = len(rollouts.responses)
        mini, micro = self._batch_sizes(n)
        temperature = self.generation.temperature or 1.0
        single_update = self.ppo_epochs == 1 and mini == n
        old = None if single_update else self._logprobs(self.policy, rollouts, micro, temperature)
        ref = None if self.reference is None else self._logprobs(self.reference, rollouts, micro, temperature)
        return old, ref

    def _update_policy(self, rollouts: RolloutBatch, advantages: torch.Tensor, correct: torch.Tensor,
                       old_logprobs: torch.Tensor | None, ref_logprobs: torch.Tensor | None):
        """PPO-style updates: `ppo_epochs` passes over mini-batches, gradient accumulation over micro-batches."""
        optimizer = self.optimizers()
        n = len(rollouts.responses)
        mini, micro = self._batch_sizes(n)
        temperature = self.generation.temperature or 1.0
        loss_mode = self.contrastive.enabled and self.contrastive.mode == "loss"
        layer = self.contrastive.layer if loss_mode else None
        history: dict[str, list[torch.Tensor]] = defaultdict(list)
        for _ in range(self.ppo_epochs):
            for start in range(0, n, mini):
                mini_index = torch.arange(start, start + mini, device=self.device)
                norm = self._step_normalizer(rollouts.response_mask[mini_index])
                update_loss = update_pg_loss = torch.zeros((), device=self.device)
                for micro_index in self._micro_batches(rollouts, mini_index, micro, whole_groups=loss_mode):
                    part = rollouts.select(micro_index)
                    out = forward_responses(self.policy, part, temperature, layer, with_entropy=True)
                    old = out.logprobs.detach() if old_logprobs is None else old_logprobs[micro_index]
                    ref = None if ref_logprobs is None else ref_logprobs[micro_index]
                    loss, step_metrics = self.algorithm(out.logprobs, old, advantages[micro_index], part.response_mask, norm, ref)
                    if loss_mode:
                        c_out = self.contrastive(out.hidden, part.response_mask, correct[micro_index], part.groups)
                        loss = loss + c_out.policy_term * len(micro_index) / mini  # coef * batch loss
                        step_metrics |= c_out.metrics
                    self.manual_backward(loss)
                    update_loss = update_loss + loss.detach().float()
                    update_pg_loss = update_pg_loss + step_metrics.pop("actor/pg_loss").float()
                    step_metrics["actor/entropy"] = out.entropy[part.response_mask].mean()
                    for key, value in step_metrics.items():
                        history[key].append(value.detach().float())
                # micro-batch losses are shares of the update's loss (step-normalised): they add up
                history["actor/loss"].append(update_loss)
                history["actor/pg_loss"].append(update_pg_loss)
                history["actor/grad_norm"].append(self._clip_and_step(optimizer))
                if loss_mode and self.head_optimizer is not None:
                    self._step_head()  # the head (and a learned pooler) learn from the same backward
        history["numerics/skipped_updates"].append(torch.tensor(float(self.skipped_updates)))
        return {k: torch.stack(v).mean() for k, v in history.items()}

    def _micro_batches(self, rollouts: RolloutBatch, index: torch.Tensor, micro: int,
                       whole_groups: bool = False) -> list[torch.Tensor]:
        """The forward passes over `index`: slices of `micro` rollouts, or packed by token budget."""
        if self.max_tokens_per_micro_batch is None:
            return list(index.split(micro))
        lengths = rollouts.attention_mask[index].sum(-1)  # [n] prompt + response tokens
        budget, groups = self.max_tokens_per_micro_batch, rollouts.groups[index]
        packed = pack_by_tokens(lengths, budget, groups, whole_groups)
        # every rank runs as many backward passes (each one synchronises gradients under DDP)
        count = int(max_over_ranks(torch.tensor(len(packed), device=self.device)))
        if count > len(packed):
            packed = pack_by_tokens(lengths, budget, groups, whole_groups, min_batches=count)
        return [index[part.to(index.device)] for part in packed]

    def _step_normalizer(self, mask: torch.Tensor) -> StepNormalizer:
        """Aggregation denominators of one update: the counts of the global mini-batch (all ranks),
        divided by the world size because data parallelism averages the ranks' gradients, so the
        average of the ranks' losses is the loss one process would compute on the global batch."""
        mask = mask.bool()
        counts = torch.stack([mask.sum(), mask.any(-1).sum()]).double()
        tokens, sequences = (sum_over_ranks(counts).clamp(min=1) / world()[1]).tolist()
        return StepNormalizer(tokens=tokens, sequences=sequences, max_len=self.generation.max_new_tokens)

    def _step_head(self) -> None:
        """One step of the head's optimizer on its accumulated gradient, averaged across ranks."""
        for param in self.contrastive.parameters():
            if param.grad is not None:
                param.grad = mean_over_ranks(param.grad)
        self.head_optimizer.step()
        self.head_optimizer.zero_grad(set_to_none=True)

    def _clip_and_step(self, optimizer: Any) -> torch.Tensor:
        """Clip and step; a non-finite gradient skips the update (counted, and fatal after too many in a row)."""
        params = [p for p in self.policy.parameters() if p.grad is not None]
        max_norm = self.max_grad_norm if self.max_grad_norm else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm) if params else torch.tensor(0.0)
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
    def _logprobs(self, model: torch.nn.Module, rollouts: RolloutBatch, micro: int, temperature: float) -> torch.Tensor:
        index = torch.arange(len(rollouts.responses), device=self.device)
        logprobs = torch.zeros(rollouts.response_mask.shape, device=self.device)
        for part in self._micro_batches(rollouts, index, micro):
            logprobs[part] = forward_responses(model, rollouts.select(part), temperature).logprobs
        return logprobs

    # ---- validation --------------------------------------------------------------------
    def validation_step(self, batch: list[dict], batch_idx: int, dataloader_idx: int = 0) -> None:
        name = self.trainer.datamodule.val_set_names[dataloader_idx]
        verifier = self.val_verifiers[name]
        with gathered_for_generation(self.trainer.strategy):
            scores = score_batch(
                self.policy, self.tokenizer, batch, verifier, answer_extractor(verifier), self.val_generation, self.val_n
            )
        self.val_metrics[name].update(scores.correct.to(self.device), scores.answers)

    def on_validation_epoch_end(self) -> None:
        """Per-set accuracy (mean@n), pass@k and maj@k; robustness gaps to each twin; averages over sets."""
        per_set = {name: {k: float(v) for k, v in m.compute().items()} for name, m in self.val_metrics.items()}
        logged = {f"val/{name}/{key}": value for name, values in per_set.items() for key, value in values.items()}
        table = robustness_table(per_set, self.val_twins)
        logged |= {f"val/gap/{name}/{twin}": row["gap"] for (name, twin), row in table["gaps"].items()}
        logged |= {f"val/avg/{key}": value for key, value in table["average"].items()}
        self.log_dict(logged, prog_bar=False)
        for metrics in self.val_metrics.values():
            metrics.reset()

    # ---- optimisers and checkpoints ----------------------------------------------------
    def configure_optimizers(self) -> torch.optim.Optimizer:
        # The head has its own optimizer outside Lightning's list: DeepSpeed supports one
        # optimizer, and in manual optimisation each Lightning optimizer step advances global_step.
        head_params = [p for p in self.contrastive.parameters() if p.requires_grad]
        if head_params:
            self.head_optimizer = self.head_optimizer_factory(head_params)
        return self.optimizer_factory([p for p in self.policy.parameters() if p.requires_grad])

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("reference.")}
        checkpoint["clipo"] = {
            "rl_step": self.rl_step,
            "skipped_updates": self.skipped_updates,
            "rng": collect_rng_states(),
            "head_optimizer": None if self.head_optimizer is None else self.head_optimizer.state_dict(),
            "contrastive_loss": getattr(self.contrastive.loss, "state_dict", dict)(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("clipo", {})
        self.rl_step = state.get("rl_step", 0)
        self.skipped_updates = state.get("skipped_updates", 0)
        self._pending_rng = state.get("rng")
        self._pending_head_state = state.get("head_optimizer")
        if state.get("contrastive_loss") and hasattr(self.contrastive.loss, "load_state_dict"):
            self.contrastive.loss.load_state_dict(state["contrastive_loss"])

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Restore the RNG right before the first resumed step, after Lightning's set-up (which may
        # draw random numbers), so sampling continues exactly where the saved run stopped.
        if getattr(self, "_pending_rng", None) is not None:
            set_rng_states(self._pending_rng)
            self._pending_rng = None

    def on_train_start(self) -> None:
        pending = getattr(self, "_pending_head_state", None)
        if pending is not None and self.head_optimizer is not None:
            self.head_optimizer.load_state_dict(pending)
