"""Builders: turn the composed config into objects. Components themselves know nothing of Hydra."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from clipo.contrastive import (
    ContrastiveLossTerm,
    ContrastiveMode,
    ContrastiveObjective,
    ContrastiveRewardShaping,
    HeadStep,
)
from clipo.data import PromptDataModule
from clipo.evaluation.scoring import eval_sampling, split_set_spec
from clipo.evaluation.validation import Validation
from clipo.models import is_adapter, load_model
from clipo.registry import ADVANTAGES, ALGORITHMS, ENGINES, HEADS, LOSSES, POOLERS, VERIFIERS, register_components
from clipo.rl.batching import UpdateBatching
from clipo.rl.collector import RolloutCollector
from clipo.rl.dynamic_sampling import DynamicSampling, OverlongShaping
from clipo.rl.module import ClipoModule
from clipo.rl.old_policy import ImportanceCorrection, RolloutLogprobs
from clipo.rl.rewards import RewardScorer, build_reward_functions, chat_prompt
from clipo.rl.rollout_log import RolloutLog
from clipo.rl.updater import PolicyUpdater
from clipo.rollout.engine_choice import choose_engine, engine_dtype, training_processes
from clipo.rollout.sampling import Sampling
from clipo.rollout.varlen import resolve_padding_free, uses_varlen_attention
from clipo.run.checkpointing import AtomicCheckpointIO
from clipo.run.precision import PrecisionPlan
from clipo.run.working_copy import WorkingCopy, cast_parameters

log = logging.getLogger(__name__)


def plain(node: Any) -> Any:
    """A config node as plain Python containers."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def run_config(cfg: DictConfig) -> dict:
    """The run's resolved config without Hydra's own node: what a checkpoint keeps to know its run."""
    return plain(OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"]))


def build_datamodule(cfg: DictConfig) -> PromptDataModule:
    data = plain(cfg.data)
    return PromptDataModule(
        train=data["train"],
        val=data.get("val"),
        prompts_per_step=data["prompts_per_step"],
        val_batch_size=data.get("val_batch_size", 32),
        seed=cfg.seed,
    )


def build_models(cfg: DictConfig, algorithm: Any) -> tuple[Any, Any, Any]:
    """(policy, tokenizer, reference); the reference is loaded only when the KL term is on, and never
    with LoRA (the updater then takes the policy with its adapter disabled, see `build_updater`)."""
    model_cfg = plain(cfg.model)
    policy, tokenizer = load_model(**model_cfg, seed=cfg.seed)
    reference = None
    if algorithm.uses_reference and not model_cfg.get("lora_rank"):
        reference, _ = load_model(**{**model_cfg, "gradient_checkpointing": False}, seed=cfg.seed)
    return policy, tokenizer, reference


@dataclass
class ContrastiveParts:
    """CLIPO's parts for the chosen mode: the objective (None for loss=none), its head's optimizer step,
    and the one adapter the mode uses (reward shaping for the collector, or a loss term for the updater)."""

    objective: ContrastiveObjective | None
    head_step: HeadStep
    reward_shaping: ContrastiveRewardShaping | None = None
    loss_term: ContrastiveLossTerm | None = None


def build_contrastive(cfg: DictConfig, mode: ContrastiveMode, hidden_size: int) -> ContrastiveParts:
    c = cfg.contrastive
    objective = None
    if mode is not ContrastiveMode.OFF:
        # Initialise head and pooler from their own seeded stream: the sampling RNG then does not depend
        # on which parts are chosen, so `loss=none` and `loss=infonce` draw the same first rollouts.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            pooler = POOLERS.build(plain(cfg.pooler), hidden_size=hidden_size)
            head = HEADS.build(plain(cfg.head), in_dim=hidden_size)
        objective = ContrastiveObjective(pooler, head, LOSSES.build(plain(cfg.loss)))
    head_step = HeadStep(objective, instantiate(c.head_pooler_optimizer))
    if mode is ContrastiveMode.REWARD:
        shaping = ContrastiveRewardShaping(objective, head_step, c.lam, c.c, c.floor, c.head_warmup_steps)
        return ContrastiveParts(objective, head_step, reward_shaping=shaping)
    if mode is ContrastiveMode.LOSS:
        term = ContrastiveLossTerm(objective, head_step, c.coef, cfg.rollout.hidden_layer)
        return ContrastiveParts(objective, head_step, loss_term=term)
    return ContrastiveParts(None, head_step)


def rollout_sampling(cfg: DictConfig) -> tuple[Sampling, Sampling]:
    """Sampling of training rollouts, and validation's (greedy by default)."""
    r, v = cfg.rollout, cfg.validation
    train = Sampling(max_new_tokens=r.max_new_tokens, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k)
    return train, eval_sampling(v.n, v.temperature, v.top_p, v.max_new_tokens or r.max_new_tokens)


def build_verifiers(cfg: DictConfig) -> tuple[Any, dict[str, Any]]:
    """The training verifier (`verifier=`) and one per validation set: of the training kind it is the
    same object, of another kind it is built once from `verifiers.<kind>` (the math verifier owns a
    worker pool), so command-line overrides reach both."""
    train_verifier = VERIFIERS.build(plain(cfg.verifier))
    by_kind = {cfg.verifier.name: train_verifier}
    per_set = {}
    for name, spec in (plain(cfg.data.get("val")) or {}).items():
        kind = split_set_spec(spec)[1]
        if kind not in by_kind:
            by_kind[kind] = build_verifier(cfg, kind)
        per_set[name] = by_kind[kind]
    return train_verifier, per_set


def build_verifier(cfg: DictConfig, kind: str) -> Any:
    """The verifier `kind` with its settings from `verifiers.<kind>` (a registered kind without a config: defaults)."""
    return VERIFIERS.build(plain((cfg.get("verifiers") or {}).get(kind)) or {"name": kind})


def engine_choice(cfg: DictConfig, policy: Any) -> Any:
    """`rollout.engine`, with `auto` decided here, once, and said."""
    choice = choose_engine(cfg.rollout.engine, policy, training_processes(cfg.get("trainer") or {}))
    log.info("rollout engine %s: %s", choice.value, choice.reason)
    return choice


def build_engine(cfg: DictConfig, policy: Any, tokenizer: Any, plan: PrecisionPlan | None = None,
                 copy: WorkingCopy | None = None, choice: Any = None) -> Any:
    """The chosen engine with its own settings block when it has one (`rollout.vllm`), sampling as the
    precision `plan` says: vllm holds its weights in the plan's sampling dtype, hf samples from the bf16
    `copy` when the plan samples from one (no plan: the policy's dtype)."""
    choice = choice or engine_choice(cfg, policy)
    settings = plain(cfg.rollout.get(choice.value)) or {}
    if choice.value == "vllm":
        settings["dtype"] = engine_dtype(settings.get("dtype"), plan.sampling if plan else None)
    elif plan is not None and plan.sampler_copy:
        settings["sampler"] = copy.module
    return ENGINES.build({"name": choice.value, **settings}, policy=policy, tokenizer=tokenizer)


def policy_copy(plan: PrecisionPlan, policy: Any, engine: str) -> WorkingCopy | None:
    """The policy's bf16 copy, when the plan computes on one or the hf engine samples from one."""
    return WorkingCopy(policy) if plan.working_copy or (plan.sampler_copy and engine == "hf") else None


def build_rewards(cfg: DictConfig, verifier: Any, tokenizer: Any) -> RewardScorer:
    """The verifier and the run's own reward functions (`reward_funcs`, `reward_weights`, `reward_timeout_s`)."""
    functions = build_reward_functions(plain(cfg.reward_funcs), plain(cfg.reward_weights), verifier,
                                       cfg.get("reward_timeout_s"))
    return RewardScorer(functions, chat_prompt(tokenizer))


def build_rollout_log(cfg: DictConfig) -> RolloutLog | None:
    """`<run dir>/rollouts.jsonl` every `logging.rollouts_every_n_steps` RL steps (0: none)."""
    log = cfg.logging
    if not log.rollouts_every_n_steps:
        return None
    return RolloutLog(Path(cfg.paths.output_dir) / "rollouts.jsonl", log.rollouts_every_n_steps,
                      log.rollouts_max_rows_per_step)


def build_batching(cfg: DictConfig, policy: Any) -> UpdateBatching:
    p = cfg.ppo
    padding_free = resolve_padding_free(p.get("padding_free", "auto"), policy)
    return UpdateBatching(p.epochs, p.mini_batch_size, p.micro_batch_size, p.max_tokens_per_micro_batch,
                          padding_free, varlen=padding_free and uses_varlen_attention(policy))


def build_rollout_logprobs(
    cfg: DictConfig, policy: Any, reference: Any, algorithm: Any, sampling: Sampling, batching: UpdateBatching,
    mode: ContrastiveMode,
) -> RolloutLogprobs:
    """The log-prob plan, decided once: pi_old before the update only when the batch gets several updates;
    the sampler correction when on; hidden states for reward shaping; the reference when the loss has KL."""
    correction = cfg.rollout.importance_sampling
    # LoRA with a KL term: the reference is the policy with its adapter disabled (no second model)
    base_reference = reference is None and algorithm.uses_reference and is_adapter(policy)
    return RolloutLogprobs(
        policy,
        sampling.logprob_temperature,
        batching,
        old_before_update=batching.reuses_batch(cfg.data.prompts_per_step * cfg.rollout.group_size),
        correction=ImportanceCorrection(correction.cap, correction.level, correction.mode) if correction.enabled else None,
        hidden_layer=cfg.rollout.hidden_layer if mode is ContrastiveMode.REWARD else None,
        reference=policy if base_reference else reference,
        reference_context=policy.disable_adapter if base_reference else nullcontext,
    )


def build_collector(
    cfg: DictConfig, engine: Any, verifier: Any, rewards: RewardScorer, sampling: Sampling, logprobs: RolloutLogprobs,
    reward_shaping: ContrastiveRewardShaping | None, pad_token_id: int,
) -> RolloutCollector:
    s = cfg.sampling
    return RolloutCollector(
        engine=engine,
        verifier=verifier,
        rewards=rewards,
        advantage=ADVANTAGES.build(plain(cfg.advantage)),
        sampling=sampling,
        group_size=cfg.rollout.group_size,
        logprobs=logprobs,
        dynamic_sampling=DynamicSampling(pad_token_id, s.max_refill_batches, s.filter_on) if s.dynamic else None,
        overlong=OverlongShaping(sampling.max_new_tokens, s.overlong_buffer, s.overlong_penalty) if s.overlong_buffer else None,
        reward_shaping=reward_shaping,
    )


def build_updater(
    cfg: DictConfig, policy: Any, algorithm: Any, batching: UpdateBatching, sampling: Sampling,
    loss_term: ContrastiveLossTerm | None, forward_model: Any = None,
) -> PolicyUpdater:
    return PolicyUpdater(
        policy=policy,
        forward_model=forward_model,
        algorithm=algorithm,
        batching=batching,
        temperature=sampling.logprob_temperature,
        max_len=sampling.max_new_tokens,
        max_grad_norm=cfg.ppo.max_grad_norm,
        max_nonfinite_updates=cfg.ppo.max_nonfinite_updates,
        contrastive=loss_term,
    )


def build_validation(cfg: DictConfig, engine: Any, verifiers: dict[str, Any], sampling: Sampling) -> Validation:
    twins = {name: split_set_spec(spec)[2] for name, spec in (plain(cfg.data.get("val")) or {}).items()}
    return Validation(engine, sampling, verifiers, twins, cfg.validation.n, list(cfg.validation.ks))


def build_module(cfg: DictConfig, plan: PrecisionPlan | None = None) -> ClipoModule:
    """The LightningModule with every part; `plan`: the run's precision (None: resolved from the config)."""
    register_components()
    if plan is None:
        from clipo.run.runtime import resolve_precision

        plan = resolve_precision(cfg)
    mode = ContrastiveMode.resolve(cfg.loss.name, cfg.contrastive.mode)
    algorithm = ALGORITHMS.build(plain(cfg.algorithm))
    policy, tokenizer, reference = build_models(cfg, algorithm)
    sampling, val_sampling = rollout_sampling(cfg)
    verifier, val_verifiers = build_verifiers(cfg)
    choice = engine_choice(cfg, policy)
    copy = policy_copy(plan, policy, choice.value)
    engine = build_engine(cfg, policy, tokenizer, plan, copy, choice)
    # the model the update and the collector's passes compute on: the bf16 working copy, or the policy
    compute = copy.module if plan.working_copy else policy
    if plan.working_copy and reference is not None:  # frozen: cast once, computes as the copy does
        cast_parameters(reference, torch.bfloat16)
    optimizer = instantiate(cfg.optimizer)
    if copy is not None:  # the copy is cast again after each optimizer step
        optimizer = copy.optimizer_factory(optimizer)
    contrastive = build_contrastive(cfg, mode, policy.config.hidden_size)
    batching = build_batching(cfg, policy)
    logprobs = build_rollout_logprobs(cfg, compute, reference, algorithm, sampling, batching, mode)
    rewards = build_rewards(cfg, verifier, tokenizer)
    return ClipoModule(
        policy=policy,
        tokenizer=tokenizer,
        collector=build_collector(cfg, engine, verifier, rewards, sampling, logprobs, contrastive.reward_shaping,
                                  tokenizer.pad_token_id),
        updater=build_updater(cfg, policy, algorithm, batching, sampling, contrastive.loss_term, compute),
        contrastive=contrastive.objective,
        head_step=contrastive.head_step,
        optimizer=optimizer,
        validation=build_validation(cfg, engine, val_verifiers, val_sampling),
        reference=reference,
        rollout_log=build_rollout_log(cfg),
        run_config=run_config(cfg),
    )


def build_strategy(cfg: DictConfig) -> Any:
    spec = plain(cfg.strategy)
    name = spec.pop("name")
    return instantiate(spec) if "_target_" in spec else name


def build_trainer(cfg: DictConfig) -> L.Trainer:
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    loggers = [instantiate(lg) for lg in (cfg.get("logger") or {}).values()]
    no_validation = {} if cfg.data.get("val") else {"limit_val_batches": 0}
    strategy = build_strategy(cfg)
    # DeepSpeed and FSDP write their own sharded checkpoint folders; every other strategy writes through this
    plugins = [] if str(cfg.strategy.name).startswith(("deepspeed", "fsdp")) else [AtomicCheckpointIO()]
    return instantiate(
        cfg.trainer, strategy=strategy, callbacks=callbacks, logger=loggers or False, plugins=plugins, **no_validation
    )
