"""Builders: turn the composed config into objects. Components themselves know nothing of Hydra."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from clipo.checkpointing import AtomicCheckpointIO
from clipo.collector import RolloutCollector
from clipo.compose import CONFIG_DIR
from clipo.contrastive import ContrastiveMode, ContrastiveObjective
from clipo.contrastive.steps import ContrastiveLossTerm, ContrastiveRewardShaping, HeadStep
from clipo.dapo import DynamicSampling, OverlongShaping
from clipo.data import PromptDataModule
from clipo.models import is_adapter, load_model
from clipo.module import ClipoModule
from clipo.registry import ADVANTAGES, ALGORITHMS, ENGINES, HEADS, LOSSES, POOLERS, VERIFIERS, register_components
from clipo.rewards import RewardScorer, build_reward_functions, chat_prompt
from clipo.rollout.completion import TrainingForwardCompletion
from clipo.rollout.sampling import Sampling
from clipo.rollout_log import RolloutLog
from clipo.scoring import eval_sampling, split_set_spec
from clipo.updater import PolicyUpdater


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


def build_contrastive(cfg: DictConfig, mode: ContrastiveMode, hidden_size: int) -> ContrastiveObjective:
    loss = LOSSES.build(plain(cfg.loss))
    # Initialise the head from its own seeded stream: the sampling RNG then does not depend
    # on which parts are chosen, so `loss=none` and `loss=infonce` draw the same first rollouts.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        pooler = POOLERS.build(plain(cfg.pooler), hidden_size=hidden_size)
        head = HEADS.build(plain(cfg.head), in_dim=hidden_size) if mode is not ContrastiveMode.OFF else None
    c = cfg.contrastive
    return ContrastiveObjective(
        pooler=pooler,
        head=head,
        loss=loss,
        mode=mode,
        lam=c.lam,
        c=c.c,
        floor=c.floor,
        coef=c.coef,
        head_warmup_steps=c.head_warmup_steps,
    )


def rollout_sampling(cfg: DictConfig) -> tuple[Sampling, Sampling]:
    """Sampling of training rollouts, and validation's (greedy by default)."""
    r, v = cfg.rollout, cfg.validation
    train = Sampling(max_new_tokens=r.max_new_tokens, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k)
    return train, eval_sampling(v.n, v.temperature, v.top_p, v.max_new_tokens or r.max_new_tokens)


def build_verifier(name: str) -> Any:
    """The verifier `name` with the settings of `configs/verifier/<name>.yaml` (not the class defaults)."""
    path = CONFIG_DIR / "verifier" / f"{name}.yaml"
    spec = plain(OmegaConf.load(path)) if path.is_file() else {"name": name}
    return VERIFIERS.build(spec)


def build_verifiers(cfg: DictConfig) -> tuple[Any, dict[str, Any]]:
    """The training verifier (`verifier=`, with its overrides) and one per validation set, each from its
    config file; a kind is built once and shared (the math verifier owns a worker pool)."""
    train_verifier = VERIFIERS.build(plain(cfg.verifier))
    by_kind = {cfg.verifier.name: train_verifier}
    per_set = {}
    for name, spec in (plain(cfg.data.get("val")) or {}).items():
        kind = split_set_spec(spec)[1]
        if kind not in by_kind:
            by_kind[kind] = build_verifier(kind)
        per_set[name] = by_kind[kind]
    return train_verifier, per_set


def build_engine(cfg: DictConfig, policy: Any, tokenizer: Any) -> Any:
    """`rollout.engine`, with its own settings block when it has one (`rollout.vllm`)."""
    name = cfg.rollout.engine
    return ENGINES.build({"name": name, **(plain(cfg.rollout.get(name)) or {})}, policy=policy, tokenizer=tokenizer)


def build_rewards(cfg: DictConfig, verifier: Any, tokenizer: Any) -> RewardScorer:
    """The verifier and the run's own reward functions (`reward_funcs`, `reward_weights`)."""
    functions = build_reward_functions(plain(cfg.reward_funcs), plain(cfg.reward_weights), verifier)
    return RewardScorer(functions, chat_prompt(tokenizer))


def build_rollout_log(cfg: DictConfig) -> RolloutLog | None:
    """`<run dir>/rollouts.jsonl` every `logging.rollouts_every_n_steps` RL steps (0: none)."""
    log = cfg.get("logging") or {}
    every = log.get("rollouts_every_n_steps", 1)
    if not every:
        return None
    return RolloutLog(Path(cfg.paths.output_dir) / "rollouts.jsonl", every, log.get("rollouts_max_rows_per_step", 64))


def build_collector(
    cfg: DictConfig, engine: Any, verifier: Any, rewards: RewardScorer, sampling: Sampling, mode: ContrastiveMode,
    objective: ContrastiveObjective, head_step: HeadStep, policy: Any, pad_token_id: int,
    reuses_batch: Callable[[int], bool],
) -> RolloutCollector:
    s, correction = cfg.sampling, cfg.rollout.importance_sampling
    return RolloutCollector(
        engine=engine,
        verifier=verifier,
        rewards=rewards,
        advantage=ADVANTAGES.build(plain(cfg.advantage)),
        sampling=sampling,
        group_size=cfg.rollout.group_size,
        pad_token_id=pad_token_id,
        capture_layer=cfg.rollout.capture_layer if mode is ContrastiveMode.REWARD else None,
        dynamic_sampling=DynamicSampling(s.max_refill_batches) if s.dynamic else None,
        overlong=OverlongShaping(sampling.max_new_tokens, s.overlong_buffer, s.overlong_penalty) if s.overlong_buffer else None,
        reward_shaping=ContrastiveRewardShaping(objective, head_step) if mode is ContrastiveMode.REWARD else None,
        completion=TrainingForwardCompletion(policy, sampling.logprob_temperature, cfg.ppo.micro_batch_size),
        importance_cap=correction.cap if correction.enabled else None,
        reuses_batch=reuses_batch,
    )


def build_updater(
    cfg: DictConfig, policy: Any, algorithm: Any, reference: Any, sampling: Sampling, mode: ContrastiveMode,
    objective: ContrastiveObjective, head_step: HeadStep,
) -> PolicyUpdater:
    loss_mode = mode is ContrastiveMode.LOSS
    # LoRA with a KL term: the reference is the policy with its adapter disabled (no second model)
    base_reference = reference is None and algorithm.uses_reference and is_adapter(policy)
    return PolicyUpdater(
        policy=policy,
        algorithm=algorithm,
        temperature=sampling.logprob_temperature,
        max_len=sampling.max_new_tokens,
        epochs=cfg.ppo.epochs,
        mini_batch_size=cfg.ppo.mini_batch_size,
        micro_batch_size=cfg.ppo.micro_batch_size,
        max_tokens_per_micro_batch=cfg.ppo.max_tokens_per_micro_batch,
        max_grad_norm=cfg.ppo.max_grad_norm,
        max_nonfinite_updates=cfg.ppo.max_nonfinite_updates,
        reference=policy if base_reference else reference,
        reference_context=policy.disable_adapter if base_reference else nullcontext,
        contrastive=ContrastiveLossTerm(objective, head_step) if loss_mode else None,
        hidden_layer=cfg.rollout.capture_layer if loss_mode else None,
        importance_cap=cfg.rollout.importance_sampling.cap if cfg.rollout.importance_sampling.enabled else None,
    )


def build_module(cfg: DictConfig) -> ClipoModule:
    register_components()
    mode = ContrastiveMode.resolve(cfg.loss.name, cfg.contrastive.mode)
    algorithm = ALGORITHMS.build(plain(cfg.algorithm))
    policy, tokenizer, reference = build_models(cfg, algorithm)
    sampling, val_sampling = rollout_sampling(cfg)
    verifier, val_verifiers = build_verifiers(cfg)
    val_twins = {name: split_set_spec(spec)[2] for name, spec in (plain(cfg.data.get("val")) or {}).items()}
    engine = build_engine(cfg, policy, tokenizer)
    objective = build_contrastive(cfg, mode, policy.config.hidden_size)
    head_step = HeadStep(objective, instantiate(cfg.contrastive.head_pooler_optimizer))
    updater = build_updater(cfg, policy, algorithm, reference, sampling, mode, objective, head_step)
    return ClipoModule(
        policy=policy,
        tokenizer=tokenizer,
        reference=reference,
        collector=build_collector(cfg, engine, verifier, build_rewards(cfg, verifier, tokenizer), sampling, mode,
                                  objective, head_step, policy, tokenizer.pad_token_id, updater.reuses_batch),
        updater=updater,
        contrastive=objective,
        head_step=head_step,
        optimizer=instantiate(cfg.optimizer),
        engine=engine,
        val_sampling=val_sampling,
        rollout_log=build_rollout_log(cfg),
        val_verifiers=val_verifiers,
        val_twins=val_twins,
        val_n=cfg.validation.n,
        val_ks=list(cfg.validation.ks),
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
