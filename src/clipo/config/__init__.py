"""Checks on a composed config, run before any model or data is loaded.

Each problem gets one message that says what is wrong and what to change; all
problems are reported together.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, ListConfig, OmegaConf

from clipo.config.batches import batch_problems
from clipo.config.keys import unknown_key_problems
from clipo.contrastive.modes import ContrastiveLossTerm, ContrastiveMode, ContrastiveRewardShaping
from clipo.evaluation.scoring import eval_sampling
from clipo.registry import ADVANTAGES, ALGORITHMS, ENGINES, HEADS, LOSSES, POOLERS, VERIFIERS
from clipo.rl.async_rollouts import async_problem
from clipo.rl.dynamic_sampling import DynamicSampling, OverlongShaping
from clipo.rl.old_policy import ImportanceCorrection
from clipo.rl.rewards import reward_config_problems
from clipo.rollout.sampling import Sampling
from clipo.run.ranks import timeout_problem


class ConfigError(ValueError):
    """A configuration that cannot run; the message lists every problem found."""


def validate_config(cfg: DictConfig) -> None:
    problems: list[str] = []
    for key, registry in [
        ("advantage.name", ADVANTAGES),
        ("algorithm.name", ALGORITHMS),
        ("verifier.name", VERIFIERS),
        ("pooler.name", POOLERS),
        ("head.name", HEADS),
        ("loss.name", LOSSES),
        ("rollout.engine", ENGINES),
    ]:
        name = OmegaConf.select(cfg, key)
        choices = registry.names() + (["auto"] if registry is ENGINES else [])
        if name not in choices:
            problems.append(f"{key}={name!r} is not a registered {registry.kind}; choose one of: {', '.join(choices)}")

    problems += _part_problems(cfg)  # the parts that need no model check their own settings
    mode = _rule(problems, lambda: ContrastiveMode.resolve(cfg.loss.name, cfg.contrastive.mode))
    problems += _contrastive_problems(cfg, mode)
    problems += _rollout_problems(cfg)
    problems += _sampling_problems(cfg)
    problems += _reward_problems(cfg)
    problems += _logging_and_lora_problems(cfg)
    problems += _engine_problems(cfg)
    problems += batch_problems(cfg, mode)
    problems += _data_problems(cfg)
    problems += _device_problems(cfg)
    problems += _precision_problems(cfg)
    problems += _optimizer_and_resume_problems(cfg)
    problems += unknown_key_problems(cfg)
    if problems:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(problems))


def _rule(problems: list[str], build: Callable[[], Any]) -> Any:
    """Run a part's own constructor (or rule) on config values: its ValueError becomes a problem, None returned."""
    try:
        return build()
    except ValueError as error:
        problems.append(str(error))
        return None


def _part_problems(cfg: DictConfig) -> list[str]:
    """The policy loss, the advantage estimator and the contrastive loss built from their settings: each
    constructor's own checks (e.g. an algorithm's clip_c and KL estimator). Unknown keys are reported by
    `unknown_key_problems` and skip the build."""
    if unknown_key_problems(cfg):
        return []
    problems: list[str] = []
    for registry, group in ((ALGORITHMS, "algorithm"), (ADVANTAGES, "advantage"), (LOSSES, "loss")):
        if cfg[group].name in registry:  # an unknown name is reported above, with the choices
            _rule(problems, lambda: registry.build(OmegaConf.to_container(cfg[group], resolve=True)))
    return problems


def _contrastive_problems(cfg: DictConfig, mode: ContrastiveMode | None) -> list[str]:
    """The mode's adapter accepts its settings (the adapters' own checks, before any model loads)."""
    c = cfg.contrastive
    if mode is ContrastiveMode.REWARD:
        return ContrastiveRewardShaping.problems(c.lam, c.c, c.floor, c.head_warmup_steps)
    if mode is ContrastiveMode.LOSS:
        return ContrastiveLossTerm.problems(c.coef)
    return []


def _rollout_problems(cfg: DictConfig) -> list[str]:
    """How training and validation sample (`Sampling`'s and `eval_sampling`'s own rules, before any model loads);
    the collectives' time limit."""
    r, v = cfg.rollout, cfg.validation
    problems = Sampling.problems(r.max_new_tokens, r.temperature, r.top_p, r.top_k, "rollout.", training=True)
    _rule(problems, lambda: eval_sampling(v.n, v.temperature, v.top_p, v.max_new_tokens or 1, "validation."))
    if problem := timeout_problem((cfg.get("distributed") or {}).get("timeout_s", "auto")):
        problems.append(problem)
    grace = (cfg.get("signals") or {}).get("grace_s")
    if grace is not None and (not isinstance(grace, (int, float)) or isinstance(grace, bool) or grace <= 0):
        problems.append(f"signals.grace_s={grace!r} must be a positive number of seconds, or null (no limit)")
    return problems


def _reward_problems(cfg: DictConfig) -> list[str]:
    """`reward_funcs` import and `reward_weights` match them (the user's modules are imported here)."""
    funcs, weights = cfg.get("reward_funcs", ["verifier"]), cfg.get("reward_weights")
    plain = [OmegaConf.to_object(x) if isinstance(x, (DictConfig, ListConfig)) else x for x in (funcs, weights)]
    return reward_config_problems(*plain, cfg.get("reward_timeout_s"))


def _logging_and_lora_problems(cfg: DictConfig) -> list[str]:
    problems = []
    every, rows = cfg.logging.rollouts_every_n_steps, cfg.logging.rollouts_max_rows_per_step
    if not isinstance(every, int) or every < 0:
        problems.append(f"logging.rollouts_every_n_steps={every} must be an integer >= 0 (0 turns rollout logs off)")
    if not isinstance(rows, int) or rows < 1:
        problems.append(f"logging.rollouts_max_rows_per_step={rows} must be an integer >= 1")
    rank, alpha = cfg.model.get("lora_rank", 0), cfg.model.get("lora_alpha", 16)
    targets = cfg.model.get("lora_target_modules", "all-linear")
    if not isinstance(rank, int) or rank < 0:
        problems.append(f"model.lora_rank={rank} must be an integer >= 0 (0: full fine-tuning, e.g. 16 for LoRA)")
    elif rank and (not isinstance(alpha, (int, float)) or alpha <= 0):
        problems.append(f"model.lora_alpha={alpha} must be > 0 (commonly 2 x lora_rank)")
    elif rank and not (targets == "all-linear" or isinstance(targets, ListConfig) and len(targets) > 0):
        problems.append(f"model.lora_target_modules={targets} must be all-linear or a list of module names, "
                        "e.g. [q_proj,k_proj,v_proj,o_proj]")
    return problems


def _sampling_problems(cfg: DictConfig) -> list[str]:
    """DAPO's sampling tricks (`sampling.*`) fit the generation budget."""
    s, budget = cfg.sampling, cfg.rollout.max_new_tokens
    problems: list[str] = []
    _rule(problems, lambda: DynamicSampling(0, s.max_refill_batches, s.filter_on))
    if s.overlong_buffer:  # 0 turns the penalty off
        _rule(problems, lambda: OverlongShaping(budget, s.overlong_buffer, s.overlong_penalty))
    return problems


def _engine_problems(cfg: DictConfig) -> list[str]:
    """The sampler correction's settings (its own check); the engine can run the model."""
    problems: list[str] = []
    i = cfg.rollout.importance_sampling
    _rule(problems, lambda: ImportanceCorrection(i.cap, i.level, i.mode, i.get("min_ratio")))
    if problem := async_problem(cfg.rollout.get("max_staleness", 0), cfg.rollout.engine):
        problems.append(problem)
    return problems + engine_problems(cfg.rollout, cfg.model)


def engine_problems(rollout_cfg: DictConfig, model_cfg: DictConfig) -> list[str]:
    """`rollout.engine=vllm` (training or evaluation): vLLM is installed and can run the model, and its
    settings (`rollout.vllm`) make sense (also with `auto`, which may pick it)."""
    problems = []
    if rollout_cfg.engine not in ("vllm", "vllm_server", "auto"):
        return problems
    from clipo.rollout.vllm_engine import kv_cache_problem

    block = "vllm_server" if rollout_cfg.engine == "vllm_server" else "vllm"
    if problem := kv_cache_problem((rollout_cfg.get(block) or {}).get("kv_cache_gib", "auto")):
        problems.append(problem.replace("rollout.vllm.", f"rollout.{block}."))
    if rollout_cfg.engine == "auto":  # vLLM when it can run the model, else hf: nothing else to require
        return problems
    if importlib.util.find_spec("vllm") is None:
        problems.append(
            f"rollout.engine={rollout_cfg.engine} needs vLLM: `./scripts/setup.sh --vllm` on a CPU machine, `pip install vllm` "
            "matching your CUDA torch on a GPU machine (README, 'Installing vLLM'), or use rollout.engine=hf"
        )
    tiny = model_cfg.get("tiny")
    if tiny and tiny.hidden_size // tiny.num_attention_heads < 32:
        head = tiny.hidden_size // tiny.num_attention_heads
        problems.append(
            f"rollout.engine={rollout_cfg.engine}: vLLM's CPU attention needs a head size >= 32, model.tiny has {head}; "
            "add model.tiny.num_attention_heads=2 model.tiny.num_key_value_heads=1"
        )
    return problems


def _data_problems(cfg: DictConfig) -> list[str]:
    problems = _evaluation_problems(cfg)
    val_batch = cfg.data.get("val_batch_size", 32)
    if not isinstance(val_batch, int) or isinstance(val_batch, bool) or val_batch < 1:
        problems.append(f"data.val_batch_size={val_batch} must be a count of prompts >= 1")
    sets = {"train": cfg.data.train, **{f"val.{k}": v for k, v in (cfg.data.get("val") or {}).items()}}
    for name, spec in sets.items():
        path = spec.get("path")
        if path is not None and not Path(path).exists():
            problems.append(
                f"data.{name}.path={path} does not exist; set CLIPO_BENCH_DIR to the folder that holds the "
                "clipo-bench parquet files, or override the path"
            )
    return problems


def _evaluation_problems(cfg: DictConfig) -> list[str]:
    """Every validation set names a registered verifier, and its twins are sets of the run."""
    problems = []
    val_sets = cfg.data.get("val") or {}
    for name, spec in val_sets.items():
        verifier = spec.get("verifier")
        if verifier is None:
            problems.append(
                f"data.val.{name} has no verifier, so nothing can score it; add `verifier:` with one of: "
                f"{', '.join(VERIFIERS.names())} (configs/benchmark/ has ready set specs)"
            )
        elif verifier not in VERIFIERS:
            problems.append(
                f"data.val.{name}.verifier={verifier!r} is not a registered verifier; choose one of: "
                f"{', '.join(VERIFIERS.names())}"
            )
        for twin in spec.get("twins") or []:
            if twin not in val_sets:
                problems.append(f"data.val.{name}.twins names {twin!r}, which is not a validation set of this run; "
                                f"add data.val.{twin} or drop it from the twins")
    return problems


def validate_model_source(cfg: DictConfig) -> None:
    """A hub id or folder that cannot load is named now, not after data and Lightning have started.
    Apart from `validate_config` because it looks at this machine (the hub cache, the network),
    so that configs stay checkable anywhere."""
    from clipo.models import hub_model_problem

    model = cfg.model
    if OmegaConf.is_missing(model, "name_or_path"):
        raise ConfigError(f"model={model.name} needs model.name_or_path: a hub id (owner/name) or a local folder")
    if model.get("tiny") is not None or model.get("gguf_package") or not model.get("name_or_path"):
        return
    problem = hub_model_problem(str(model.name_or_path), model.get("gguf_file") or "config.json")
    if problem:
        raise ConfigError(problem)


def _precision_problems(cfg: DictConfig) -> list[str]:
    """`trainer.precision` is `auto`, bf16-copy (in one process) or one Lightning accepts (checked here, before the
    model loads)."""
    from clipo.run.facts import training_processes
    from clipo.run.precision import PRECISIONS, WORKING_COPY

    precision = cfg.trainer.get("precision", "auto")
    if str(precision) not in PRECISIONS:
        return [f"trainer.precision={precision!r} is unknown; choose auto (each phase at its fastest precision on "
                f"this machine), {WORKING_COPY} (float32 weights, bf16 compute) or one of: {', '.join(PRECISIONS[2:])}"]
    if str(precision) == WORKING_COPY and (processes := training_processes(cfg.trainer)) > 1:
        return [f"trainer.precision={WORKING_COPY} trains in one process, this run has {processes}; use bf16-mixed "
                "or auto"]
    if str(precision) == WORKING_COPY and cfg.trainer.get("accelerator", "auto") != "cpu":
        import torch

        if torch.cuda.is_available():
            return [f"trainer.precision={WORKING_COPY} trains on the CPU (its copy stays there); on the GPU use "
                    "bf16-mixed, or set trainer.accelerator=cpu"]
    return []


def _device_problems(cfg: DictConfig) -> list[str]:
    """Strategy and device settings that cannot start, and a train set smaller than one global batch."""
    import torch

    problems = []
    trainer = cfg.trainer
    devices, nodes = trainer.get("devices", 1), trainer.get("num_nodes", 1)
    if isinstance(devices, int) and devices < 1 and devices != -1:
        problems.append(f"trainer.devices={devices} must be a positive count, -1 (all) or auto")
    if isinstance(nodes, int) and nodes < 1:
        problems.append(f"trainer.num_nodes={nodes} must be at least 1")
    from clipo.run.strategies import strategy_problems

    problems += strategy_problems(cfg, on_cpu=trainer.get("accelerator") == "cpu" or not torch.cuda.is_available())
    size = cfg.data.train.get("size")
    if size is not None and size < cfg.data.prompts_per_step:
        problems.append(
            f"data.train.size={size} is smaller than one step's data.prompts_per_step={cfg.data.prompts_per_step}; "
            "lower prompts_per_step or add data"
        )
    return problems


def _optimizer_and_resume_problems(cfg: DictConfig) -> list[str]:
    """Learning rates are positive numbers; the prompt limit is a count; `resume.*` names a known behaviour."""
    problems = []
    for key in ("optimizer.lr", "contrastive.head_pooler_optimizer.lr"):
        lr = OmegaConf.select(cfg, key)
        if lr is not None and (not isinstance(lr, (int, float)) or isinstance(lr, bool) or lr <= 0):
            problems.append(f"{key}={lr} must be a positive number (the paper's policy lr is 1e-6, the head's 1e-3)")
    limit = cfg.data.get("max_prompt_tokens", "auto")
    if not (limit is None or limit == "auto" or isinstance(limit, int) and not isinstance(limit, bool) and limit > 0):
        problems.append(f"data.max_prompt_tokens={limit} must be a positive token count, auto (the model's context "
                        "minus rollout.max_new_tokens) or null (no limit)")
    resume = cfg.get("resume") or {}
    if resume.get("missing", "error") not in ("error", "fresh"):
        problems.append(f"resume.missing={resume.get('missing')!r} must be error (ckpt_path=last without a checkpoint "
                        "stops) or fresh (it starts the run from scratch)")
    return problems
