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
from clipo.registry import ADVANTAGES, ALGORITHMS, ENGINES, HEADS, LOSSES, POOLERS, VERIFIERS
from clipo.rl.async_rollouts import async_collector, async_engine
from clipo.rl.batching import AUTO_TOKENS, UpdateBatching
from clipo.rl.collector import RolloutCollector
from clipo.rl.dynamic_sampling import DynamicSampling, OverlongShaping
from clipo.rl.module import ClipoModule
from clipo.rl.old_policy import ImportanceCorrection, LogprobPasses
from clipo.rl.rewards import RewardScorer, build_reward_functions
from clipo.rl.rollout_log import RolloutLog
from clipo.rl.updater import PolicyUpdater
from clipo.rollout.engine_choice import choose_engine, engine_dtype
from clipo.rollout.forward import plan_training_forward
from clipo.rollout.sampling import Sampling
from clipo.run.checkpointing import AtomicCheckpointIO
from clipo.run.facts import RunFacts, StrategyKind, detect_facts
from clipo.run.precision import PrecisionPlan
from clipo.run.ranks import timed_strategy
from clipo.run.runtime import Choice
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


def engine_choice(cfg: DictConfig, policy: Any, processes: int = 1) -> Choice:
    """`rollout.engine`, with `auto` decided here, once, and said."""
    choice = choose_engine(cfg.rollout.engine, policy, processes)
    log.info("rollout engine %s: %s", choice.value, choice.reason)
    return choice


def build_engine(cfg: DictConfig, policy: Any, tokenizer: Any, processes: int = 1, plan: PrecisionPlan | None = None,
                 copy: WorkingCopy | None = None, choice: Choice | None = None) -> tuple[Any, Choice]:
    """The engine `rollout.engine` names (`choice`: decided already), with its own settings block when it has one
    (`rollout.vllm`), and the choice; it samples as the precision `plan` says: vllm holds its weights in the
    plan's sampling dtype, hf samples from the bf16 `copy` when the plan samples from one (no plan: the
    policy's own dtype, as evaluate.py scores)."""
    choice = choice or engine_choice(cfg, policy, processes)
    settings = plain(cfg.rollout.get(choice.value)) or {}
    if choice.value in ("vllm", "vllm_server"):
        settings["dtype"] = engine_dtype(settings.get("dtype"), plan.sampling if plan else None)
    elif plan is not None and plan.sampler_copy:
        settings["sampler"] = copy.module
    return ENGINES.build({"name": choice.value, **settings}, policy=policy, tokenizer=tokenizer), choice


def policy_copy(plan: PrecisionPlan, policy: Any, engine: str) -> WorkingCopy | None:
    """The policy's bf16 copy, when the plan computes on one or the hf engine samples from one."""
    return WorkingCopy(policy) if plan.working_copy or (plan.sampler_copy and engine == "hf") else None


def build_rewards(cfg: DictConfig, verifier: Any) -> RewardScorer:
    """The verifier and the run's own reward functions (`reward_funcs`, `reward_weights`, `reward_timeout_s`)."""
    functions = build_reward_functions(plain(cfg.reward_funcs), plain(cfg.reward_weights), verifier,
                                       cfg.get("reward_timeout_s"))
    return RewardScorer(functions)


def build_rollout_log(cfg: DictConfig) -> RolloutLog | None:
    """`<run dir>/rollouts.jsonl` every `logging.rollouts_every_n_steps` RL steps (0: none)."""
    log = cfg.logging
    if not log.rollouts_every_n_steps:
        return None
    return RolloutLog(Path(cfg.paths.output_dir) / "rollouts.jsonl", log.rollouts_every_n_steps,
                      log.rollouts_max_rows_per_step)


def build_batching(cfg: DictConfig, policy: Any, whole_groups: bool, device: str = "cpu") -> UpdateBatching:
    """Micro-batching and the training forward's plan, decided once for the policy and said in the run's first
    lines; `whole_groups`: a loss taken per forward pass over a group's rollouts (CLIPO's loss mode); `device`:
    the kind the policy trains on ("cpu" or "cuda"), whose token budget `auto` takes."""
    p = cfg.ppo
    forward = plan_training_forward(policy, p.forward_layout)
    log.info("training forward %s: %s", forward.layout.value, forward.reason)
    budget = p.max_tokens_per_micro_batch
    auto = budget == "auto"
    return UpdateBatching(forward, p.epochs, p.mini_batch_size, p.micro_batch_size,
                          AUTO_TOKENS[device] if auto else budget, grow_budget=auto, whole_groups=whole_groups)


def build_logprob_passes(
    cfg: DictConfig, policy: Any, reference: Any, algorithm: Any, sampling: Sampling, batching: UpdateBatching,
    hidden_layer: int | None,
) -> LogprobPasses:
    """The collector's no-grad passes, decided once: pi_old before the update only when the batch gets several
    updates; `hidden_layer` when reward shaping needs states the engine does not give; the reference when
    the loss has a KL term."""
    # LoRA with a KL term: the reference is the policy with its adapter disabled (no second model)
    base_reference = reference is None and algorithm.uses_reference and is_adapter(policy)
    return LogprobPasses(
        policy,
        sampling.logprob_temperature,
        batching,
        old_before_update=batching.reuses_batch(cfg.data.prompts_per_step * cfg.rollout.group_size),
        hidden_layer=hidden_layer,
        reference=policy if base_reference else reference,
        reference_context=policy.disable_adapter if base_reference else nullcontext,
    )


def build_collector(
    cfg: DictConfig, engine: Any, verifier: Any, rewards: RewardScorer, sampling: Sampling, logprobs: LogprobPasses,
    reward_shaping: ContrastiveRewardShaping | None, pad_token_id: int, capture_layer: int | None,
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
        capture_layer=capture_layer,
        dynamic_sampling=DynamicSampling(pad_token_id, s.max_refill_batches, s.filter_on) if s.dynamic else None,
        overlong=OverlongShaping(sampling.max_new_tokens, s.overlong_buffer, s.overlong_penalty) if s.overlong_buffer else None,
        reward_shaping=reward_shaping,
    )


def build_updater(
    cfg: DictConfig, policy: Any, algorithm: Any, batching: UpdateBatching, sampling: Sampling,
    loss_term: ContrastiveLossTerm | None, sampler_logprobs: bool, facts: RunFacts | None = None,
    forward_model: Any = None,
) -> PolicyUpdater:
    """The update; with an engine that reports its log-probs, the sampler correction (`rollout.importance_sampling`);
    `forward_model`: what it computes on (the policy's bf16 working copy; None: the policy)."""
    correction = cfg.rollout.importance_sampling
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
        sampler_logprobs=sampler_logprobs,
        sharded_grad_norm=facts is not None and facts.strategy is StrategyKind.FSDP,
        correction=ImportanceCorrection(correction.cap, correction.level, correction.mode,
                                        correction.get("min_ratio")) if correction.enabled else None,
    )


def build_validation(cfg: DictConfig, engine: Any, verifiers: dict[str, Any], sampling: Sampling) -> Validation:
    twins = {name: split_set_spec(spec)[2] for name, spec in (plain(cfg.data.get("val")) or {}).items()}
    return Validation(engine, sampling, verifiers, twins, cfg.validation.n, list(cfg.validation.ks))


def build_precision_parts(cfg: DictConfig, facts: RunFacts, policy: Any, tokenizer: Any,
                          reference: Any) -> tuple[Any, Choice, torch.nn.Module, Any]:
    """What the precision plan makes: (the engine, the engine choice, the module the update and the
    collector's passes compute on: the bf16 working copy or the policy itself, the optimizer factory,
    which casts the copy again after each step)."""
    plan = facts.precision
    choice = engine_choice(cfg, policy, facts.processes)
    copy = policy_copy(plan, policy, choice.value)
    engine, choice = build_engine(cfg, policy, tokenizer, facts.processes, plan, copy, choice)
    engine = async_engine(cfg.rollout.max_staleness, engine)
    compute = copy.module if plan.working_copy else policy
    if plan.working_copy and reference is not None:  # frozen: cast once, computes as the copy does
        cast_parameters(reference, torch.bfloat16)
    optimizer = instantiate(cfg.optimizer)
    return engine, choice, compute, optimizer if copy is None else copy.optimizer_factory(optimizer)


def build_module(cfg: DictConfig, facts: RunFacts | None = None,
                 verifiers: tuple[Any, dict[str, Any]] | None = None) -> ClipoModule:
    """Every part of the run, from the config and the run's facts (None: detected here, for tests and notebooks);
    the module keeps the facts, with the engine chosen once the policy has loaded. `verifiers`: the training
    verifier and the validation sets' (`build_verifiers`), when the data check built them already."""
    facts = facts or detect_facts(cfg)
    mode = facts.contrastive
    algorithm = ALGORITHMS.build(plain(cfg.algorithm))
    policy, tokenizer, reference = build_models(cfg, algorithm)
    sampling, val_sampling = rollout_sampling(cfg)
    verifier, val_verifiers = verifiers or build_verifiers(cfg)
    engine, choice, compute, optimizer = build_precision_parts(cfg, facts, policy, tokenizer, reference)
    contrastive = build_contrastive(cfg, mode, policy.config.hidden_size)
    # CLIPO's loss mode and a loss over a group's rollouts (`needs_whole_groups`) are taken per forward pass
    whole_groups = mode is ContrastiveMode.LOSS or algorithm.needs_whole_groups
    batching = build_batching(cfg, policy, whole_groups=whole_groups, device=facts.device)
    # reward shaping pools hidden states: captured while sampling, or taken by the collector's pass
    shaping_layer = cfg.rollout.hidden_layer if mode is ContrastiveMode.REWARD else None
    captured = engine.gives_hidden_states
    logprobs = build_logprob_passes(cfg, compute, reference, algorithm, sampling, batching,
                                    None if captured else shaping_layer)
    rewards = build_rewards(cfg, verifier)
    return ClipoModule(
        policy=policy,
        tokenizer=tokenizer,
        collector=async_collector(cfg.rollout.max_staleness, build_collector(
            cfg, engine, verifier, rewards, sampling, logprobs, contrastive.reward_shaping, tokenizer.pad_token_id,
            shaping_layer if captured else None)),
        updater=build_updater(cfg, policy, algorithm, batching, sampling, contrastive.loss_term,
                              engine.gives_sampling_logprobs, facts, compute),
        contrastive=contrastive.objective,
        head_step=contrastive.head_step,
        optimizer=optimizer,
        validation=build_validation(cfg, engine, val_verifiers, val_sampling),
        facts=facts.with_engine(choice),
        reference=reference,
        rollout_log=build_rollout_log(cfg),
        run_config=run_config(cfg),
    )


def build_strategy(cfg: DictConfig) -> Any:
    spec = plain(cfg.strategy)
    name = spec.pop("name")
    return timed_strategy(spec, name, cfg)  # collectives time out after distributed.timeout_s


def build_trainer(cfg: DictConfig, facts: RunFacts) -> L.Trainer:
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    loggers = [instantiate(lg) for lg in (cfg.get("logger") or {}).values()]
    no_validation = {} if cfg.data.get("val") else {"limit_val_batches": 0}
    strategy = build_strategy(cfg)
    # DeepSpeed and FSDP write their own sharded checkpoint folders; every other strategy writes through this
    plugins = [] if facts.strategy.writes_folders else [AtomicCheckpointIO()]
    return instantiate(
        cfg.trainer, strategy=strategy, callbacks=callbacks, logger=loggers or False, plugins=plugins, **no_validation
    )
