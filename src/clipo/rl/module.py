"""The LightningModule: one RL step = collect (`RolloutCollector`), then update (`PolicyUpdater`).

It orders the two halves, logs, validates and checkpoints; every part is built elsewhere
(`clipo.builders`) and no decision about the algorithm is taken here. Optimisation is manual:
an RL step samples, scores and then makes one or more optimizer updates.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any, Callable

import lightning as L
import torch
from torch.nn.parallel import DistributedDataParallel

from clipo.contrastive import ContrastiveObjective
from clipo.contrastive.modes import HeadStep
from clipo.distributed import gathered_for_generation, mean_over_ranks
from clipo.evaluation.validation import Validation
from clipo.rl.collector import RolloutCollector, Trajectory
from clipo.rl.rollout_log import RolloutLog, rollout_rows
from clipo.rl.updater import PolicyUpdater
from clipo.run.facts import RunFacts, StrategyKind
from clipo.run.flops import matmul_parameters, rl_step_perf, step_passes
from clipo.run.rng import collect_rng_states, set_rng_states
from clipo.run.step_counter import RLStepCounter
from clipo.run.strategies import consolidated_state_dict, deepspeed_grad_norm, shard_for_fsdp
from clipo.run.timing import PhaseTimer


class ClipoModule(L.LightningModule):
    """Args:
        policy, tokenizer: the model being trained.
        collector, updater: the two halves of the RL step.
        contrastive: CLIPO's objective (its head and pooler are this module's submodules), or None.
        head_step: the head's optimizer step (created in `configure_optimizers`).
        optimizer: partial optimizer of the policy.
        validation: the validation sets, their verifiers and metrics.
        facts: the run's facts (strategy kind, engine chosen, ...), found once (`clipo.run.facts`).
        reference: the frozen reference model the collector scores with (here so that Lightning moves
            it to the device), or None.
        rollout_log: where rollouts are logged (`logging.rollouts_*`), or None.
        run_config: the resolved config, saved in every checkpoint (so `evaluate.py ckpt_path=...`
            rebuilds the right model without `model=`).
    """

    def __init__(
        self,
        policy: torch.nn.Module,
        tokenizer: Any,
        collector: RolloutCollector,
        updater: PolicyUpdater,
        contrastive: ContrastiveObjective | None,
        head_step: HeadStep,
        optimizer: Callable[..., torch.optim.Optimizer],
        validation: Validation,
        facts: RunFacts,
        reference: torch.nn.Module | None = None,
        rollout_log: RolloutLog | None = None,
        run_config: dict | None = None,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.strict_loading = False  # the frozen reference is not stored in checkpoints
        self.policy, self.tokenizer, self.reference = policy, tokenizer, reference
        self.collector, self.updater, self.contrastive, self.head_step = collector, updater, contrastive, head_step
        self.optimizer_factory, self.validation, self.rollout_log = optimizer, validation, rollout_log
        self.run_config, self.facts = run_config or {}, facts
        self.rl_step = 0  # rollout batches seen (policy updates wait during head warm-up)
        self.last_validation: tuple[int, dict[str, float]] | None = None  # (rl_step, metrics) of the latest pass
        self.step_counter = RLStepCounter()  # global_step counts RL steps, not optimizer updates
        self.matmul_params = matmul_parameters(policy)  # for perf/mfu, before any strategy shards the policy
        if reference is not None:
            reference.requires_grad_(False).eval()
        # The head trains on its own backward pass, outside the policy loss: DDP must not track it
        # (its gradients are averaged across ranks explicitly in `HeadStep.step`).
        parts = [] if contrastive is None else [*contrastive.named_parameters(), *contrastive.named_buffers()]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self, [f"contrastive.{n}" for n, _ in parts])

    def close_verifiers(self) -> None:
        """Shut the verifiers' worker pools down (training's and every validation set's)."""
        self.collector.close()
        self.validation.close()

    # ---- the RL step -------------------------------------------------------------------
    def training_step(self, batch: list[dict], batch_idx: int) -> None:
        with self.step_counter.step(self._trainer):
            self._rl_step(batch)

    def _rl_step(self, batch: list[dict]) -> None:
        timer = PhaseTimer()
        collected = self.collector.collect(
            batch, self.rl_step, self.trainer.datamodule.refill_batch, timer, self._generation_context, self.trainer
        )
        self._log_rollouts(collected)
        metrics = dict(collected.metrics)
        if collected.update_policy:
            metrics |= self.updater.update(collected, self.optimizers(), self.manual_backward, timer)
            with timer("push"):  # the engine's copy of the weights (and, ahead of time, its batch in flight)
                self.collector.sync_weights(self.policy)
        self.rl_step += 1
        metrics |= {f"time/{phase}": torch.tensor(s) for phase, s in timer.seconds.items()}
        metrics["time/step"] = torch.tensor(sum(timer.seconds.values()))
        metrics["perf/tokens_per_s"] = torch.tensor(timer.generated_tokens / max(timer.generation_seconds, 1e-9))
        passes = step_passes(collected.update_policy, self.updater.batching.epochs, collected.forward_passes)
        # the model the update computes on (a bf16 working copy under bf16-copy): MFU against its dtype's rate
        metrics |= rl_step_perf(self.updater.forward_model, collected.rollouts.attention_mask.sum(-1), passes,
                                float(metrics["time/step"]), self.trainer.precision, self.matmul_params)
        metrics = self._mean_over_ranks(metrics)
        self.log_dict(metrics, batch_size=len(batch))
        self.log_dict({"reward": metrics["train/reward"], "acc": metrics["train/acc"]}, prog_bar=True, logger=False)

    def _log_rollouts(self, collected: Trajectory) -> None:
        """Rows of this RL step (numbered as its logged metrics: steps done, this one included) into
        rollouts.jsonl and the W&B / TensorBoard loggers; rank 0 logs its own rollouts."""
        step = self.rl_step + 1
        if self.rollout_log is None or not self.rollout_log.due(step) or not self.trainer.is_global_zero:
            return
        c, shaping = collected, collected.contrastive
        loss, bonus = (None, None) if shaping is None else (shaping.loss, shaping.bonus)
        rows = rollout_rows(step, c.rollouts, c.scores, c.shaped_rewards, c.advantages, loss, bonus,
                            self.rollout_log.max_rows_per_step)
        self.rollout_log.write(rows, self.trainer.loggers, step)

    def _generation_context(self):
        return gathered_for_generation(self.facts.strategy, self.trainer.strategy, self.policy)

    def _mean_over_ranks(self, metrics: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Step metrics averaged over ranks in one collective (every rank logs the same keys, since
        they depend only on the config), so a DDP run logs global figures, not rank 0's."""
        keys = sorted(metrics)
        values = mean_over_ranks(torch.stack([metrics[k].detach().float().reshape(()).to(self.device) for k in keys]))
        return dict(zip(keys, values))

    # ---- validation --------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        # the weights gathered once for the whole pass: ranks hold different numbers of batches (problem i goes
        # to rank i mod W), so gathering per batch (ZeRO-3, FSDP) would put their collectives out of step
        self._validation_context = ExitStack()
        self._validation_context.enter_context(self._generation_context())

    def validation_step(self, batch: list[dict], batch_idx: int, dataloader_idx: int = 0) -> None:
        name = self.trainer.datamodule.val_set_names[dataloader_idx]
        self.validation.score(batch, name, self.device)

    def on_validation_epoch_end(self) -> None:
        """Per-set accuracy (mean@n), pass@k and maj@k; robustness gaps to each twin; averages over sets."""
        self._validation_context.close()
        logged = self.validation.compute()
        self.log_dict(logged, prog_bar=False)
        if not self.trainer.sanity_checking:
            self.last_validation = (self.rl_step, logged)

    # ---- optimisers and checkpoints ----------------------------------------------------
    def configure_optimizers(self) -> torch.optim.Optimizer:
        self.head_step.configure()
        return self.optimizer_factory([p for p in self.policy.parameters() if p.requires_grad])

    def configure_model(self) -> None:
        if self.facts.strategy is StrategyKind.FSDP:  # FSDP2 shards the policy (and the reference) here
            shard_for_fsdp(self.trainer.strategy, [self.policy, self.reference])

    def full_policy_state(self) -> dict[str, torch.Tensor] | None:
        """The policy's full weights when the strategy shards them (ZeRO-3, FSDP: a collective, every rank calls
        it; under FSDP only rank 0 receives them), else None (the policy's own state_dict is whole)."""
        if not self.facts.strategy.sharded_parameters:
            return None
        return consolidated_state_dict(self.policy, self.facts.strategy)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # the contrastive loss's RNG is in the state_dict already (module extra state). The frozen
        # reference, and a LoRA policy's frozen base (tied weights included), come from the model files,
        # not checkpoints: a policy with frozen weights keeps only its trainable ones.
        trainable = {f"policy.{n}" for n, p in self.policy.named_parameters() if p.requires_grad}
        partly_frozen = any(not p.requires_grad for p in self.policy.parameters())
        checkpoint["state_dict"] = {
            k: v for k, v in checkpoint["state_dict"].items()
            if not k.startswith("reference.") and not (partly_frozen and k.startswith("policy.") and k not in trainable)
        }
        checkpoint["clipo"] = {
            "rl_step": self.rl_step,
            "optimizer_updates": self.step_counter.state_dict(),
            **self.updater.state_dict(),
            "rng": collect_rng_states(),
            "head_pooler_optimizer": self.head_step.state_dict(),
            "config": self.run_config,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("clipo", {})
        self.rl_step = state.get("rl_step", 0)
        self.step_counter.load_state_dict(state.get("optimizer_updates", {}))
        self.updater.load_state_dict(state)
        self._pending_rng = state.get("rng")
        self._pending_head_state = state.get("head_pooler_optimizer")

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Restore the RNG right before the first resumed step, after Lightning's set-up (which may
        # draw random numbers), so sampling continues exactly where the saved run stopped.
        if getattr(self, "_pending_rng", None) is not None:
            set_rng_states(self._pending_rng)
            self._pending_rng = None

    def on_fit_start(self) -> None:
        # After the strategy's set-up: DeepSpeed (and a *-true precision) cast every parameter of
        # the module to bf16/fp16 in place, the head's too. The head and a learned pooler train on
        # their own AdamW at lr 1e-3 / weight decay 0.01, which bf16 weights would round away: cast
        # them back in place (same Parameter objects: the head optimizer keeps them, its state is float32).
        if self.contrastive is not None:
            self.contrastive.float()
        if self.facts.strategy.deepspeed:  # DeepSpeed clips and skips non-finite steps inside its own step
            self.updater.use_engine_clipping(deepspeed_grad_norm(self.trainer.strategy))

    def on_train_start(self) -> None:
        self.head_step.load_state_dict(getattr(self, "_pending_head_state", None))
