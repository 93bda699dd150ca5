"""Builders: turn the composed config into objects. Components themselves know nothing of Hydra."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from transformers import GenerationConfig

from clipo.checkpointing import AtomicCheckpointIO
from clipo.config import contrastive_mode, register_components
from clipo.contrastive import ContrastiveObjective
from clipo.data import PromptDataModule
from clipo.evaluation import eval_generation_config, split_set_spec
from clipo.models import load_model
from clipo.module import ClipoModule
from clipo.registry import ADVANTAGES, ALGORITHMS, HEADS, LOSSES, POOLERS, VERIFIERS


def plain(node: Any) -> Any:
    """A config node as plain Python containers."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


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
    """(policy, tokenizer, reference); the reference is loaded only when the KL term is on."""
    model_cfg = plain(cfg.model)
    policy, tokenizer = load_model(**model_cfg, seed=cfg.seed)
    reference = None
    if algorithm.uses_reference:
        reference, _ = load_model(**{**model_cfg, "gradient_checkpointing": False}, seed=cfg.seed)
    return policy, tokenizer, reference


def build_contrastive(cfg: DictConfig, hidden_size: int) -> ContrastiveObjective:
    mode = contrastive_mode(cfg)
    loss = LOSSES.build(plain(cfg.loss))
    # Initialise the head from its own seeded stream: the sampling RNG then does not depend
    # on which parts are chosen, so `loss=none` and `loss=infonce` draw the same first rollouts.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        pooler = POOLERS.build(plain(cfg.pooler), hidden_size=hidden_size)
        head = HEADS.build(plain(cfg.head), in_dim=hidden_size) if mode is not None else None
    c = cfg.contrastive
    return ContrastiveObjective(
        pooler=pooler,
        head=head,
        loss=loss,
        mode=mode or "reward",
        lam=c.lam,
        c=c.c,
        floor=c.floor,
        coef=c.coef,
        head_warmup_steps=c.head_warmup_steps,
    )


def generation_configs(cfg: DictConfig, tokenizer: Any) -> tuple[GenerationConfig, GenerationConfig]:
    """Sampling for rollouts, and validation's (greedy by default); both stop at EOS and use the KV cache."""
    r, v = cfg.rollout, cfg.validation
    stop = {"eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id, "use_cache": True}
    sample = GenerationConfig(
        do_sample=True, max_new_tokens=r.max_new_tokens, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k, **stop
    )
    validation = eval_generation_config(tokenizer, v.n, v.temperature, v.top_p, v.max_new_tokens or r.max_new_tokens)
    return sample, validation


def build_verifiers(cfg: DictConfig) -> tuple[Any, dict[str, Any]]:
    """The training verifier and one per validation set; a kind is built once and shared
    (the math verifier owns a worker pool)."""
    train_verifier = VERIFIERS.build(plain(cfg.verifier))
    by_kind = {cfg.verifier.name: train_verifier}
    per_set = {}
    for name, spec in (plain(cfg.data.get("val")) or {}).items():
        kind = split_set_spec(spec)[1]
        if kind not in by_kind:
            by_kind[kind] = VERIFIERS.build({"name": kind})
        per_set[name] = by_kind[kind]
    return train_verifier, per_set


def build_module(cfg: DictConfig) -> ClipoModule:
    register_components()
    algorithm = ALGORITHMS.build(plain(cfg.algorithm))
    policy, tokenizer, reference = build_models(cfg, algorithm)
    sample, validation = generation_configs(cfg, tokenizer)
    verifier, val_verifiers = build_verifiers(cfg)
    val_twins = {name: split_set_spec(spec)[2] for name, spec in (plain(cfg.data.get("val")) or {}).items()}
    return ClipoModule(
        policy=policy,
        tokenizer=tokenizer,
        reference=reference,
        verifier=verifier,
        val_verifiers=val_verifiers,
        val_twins=val_twins,
        val_n=cfg.validation.n,
        val_ks=list(cfg.validation.ks),
        advantage=ADVANTAGES.build(plain(cfg.advantage)),
        algorithm=algorithm,
        contrastive=build_contrastive(cfg, policy.config.hidden_size),
        generation=sample,
        val_generation=validation,
        optimizer=instantiate(cfg.optimizer),
        head_optimizer=instantiate(cfg.contrastive.head_optimizer),
        group_size=cfg.rollout.group_size,
        mini_batch_size=cfg.ppo.mini_batch_size,
        micro_batch_size=cfg.ppo.micro_batch_size,
        max_tokens_per_micro_batch=cfg.ppo.get("max_tokens_per_micro_batch"),
        ppo_epochs=cfg.ppo.epochs,
        max_grad_norm=cfg.ppo.max_grad_norm,
        max_nonfinite_updates=cfg.ppo.max_nonfinite_updates,
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
    # DeepSpeed writes its own sharded checkpoint folders; every other strategy writes through this
    plugins = [] if "deepspeed" in str(cfg.strategy.name) else [AtomicCheckpointIO()]
    return instantiate(
        cfg.trainer, strategy=strategy, callbacks=callbacks, logger=loggers or False, plugins=plugins, **no_validation
    )
