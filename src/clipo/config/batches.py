"""Batch sizes of a composed config: groups, mini-batches and micro-batches divide evenly over every process.

`data.prompts_per_step` and `ppo.mini_batch_size` count the whole step over all processes;
`ppo.micro_batch_size` is per process (it bounds one forward pass's memory). The sizes come from
`clipo.rl.batching.batch_sizes`, the rule the updater runs.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from clipo.contrastive.modes import ContrastiveMode
from clipo.registry import ALGORITHMS
from clipo.rl.batching import batch_sizes
from clipo.rollout.forward import LAYOUT_SETTINGS


def world_size(cfg: DictConfig) -> int | None:
    """Processes the trainer will start (devices x nodes), or None when only known at run time."""
    devices, nodes = cfg.trainer.get("devices", 1), cfg.trainer.get("num_nodes", 1)
    if isinstance(devices, int) and devices > 0 and isinstance(nodes, int) and nodes > 0:
        return devices * nodes
    return None


def batch_problems(cfg: DictConfig, mode: ContrastiveMode | None) -> list[str]:
    """Groups, mini-batches and micro-batches divide evenly, over every process."""
    problems = []
    group_size = cfg.rollout.group_size
    prompts = cfg.data.prompts_per_step
    world = world_size(cfg) or 1
    if group_size < 2:
        problems.append(f"rollout.group_size={group_size}: a group needs at least 2 rollouts to compare")
    if prompts < 1:
        problems.append(f"data.prompts_per_step={prompts} must be at least 1")
    for key in ("ppo.mini_batch_size", "ppo.micro_batch_size"):
        value = OmegaConf.select(cfg, key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            problems.append(f"{key}={value} must be a count of rollouts >= 1, or null (see configs/train.yaml)")
    if group_size < 1 or prompts < 1 or problems:
        return problems  # the sizes below divide by these
    if prompts % world:
        problems.append(
            f"data.prompts_per_step={prompts} (the global batch) does not split over {world} processes "
            f"(trainer.devices x trainer.num_nodes); use a multiple of {world}"
        )
    rollouts = prompts * group_size
    mini = cfg.ppo.mini_batch_size or rollouts
    if mini % (group_size * world):
        where = "" if world == 1 else f" x {world} processes"
        problems.append(
            f"ppo.mini_batch_size={mini} is not a multiple of rollout.group_size={group_size}{where}; use a "
            f"multiple such as {group_size * world * max(1, mini // (group_size * world))} so no group is split "
            "across updates or processes"
        )
    if rollouts % mini:
        problems.append(
            f"ppo.mini_batch_size={mini} does not divide the {rollouts} rollouts of a step "
            f"(data.prompts_per_step={prompts} x rollout.group_size={group_size})"
        )
    sizes = batch_sizes(rollouts // world, world, mini, cfg.ppo.micro_batch_size)
    mini_per_process, micro = (max(size, 1) for size in sizes)  # a world larger than the batch is reported above
    # a part that compares a group's rollouts within one forward pass needs whole groups in each
    why = "contrastive.mode=loss" if mode is ContrastiveMode.LOSS else _group_algorithm(cfg)
    budget = cfg.ppo.max_tokens_per_micro_batch
    if budget is None:  # micro_batch_size rollouts a pass
        problems += _micro_batch_problems(micro, mini, mini_per_process, world, group_size, why)
    elif isinstance(budget, (str, bool)) and budget != "auto":
        problems.append(f"ppo.max_tokens_per_micro_batch={budget!r}: use a number of tokens, auto or null")
    elif budget != "auto":  # auto is raised to the largest unit at run time, so it always fits
        problems += _token_budget_problems(budget, cfg.rollout.max_new_tokens, group_size, why)
    if cfg.ppo.epochs < 1:
        problems.append(f"ppo.epochs={cfg.ppo.epochs} must be at least 1")
    if cfg.ppo.forward_layout not in LAYOUT_SETTINGS:
        problems.append(f"ppo.forward_layout={cfg.ppo.forward_layout!r}: use one of {', '.join(LAYOUT_SETTINGS)}")
    return problems


def _micro_batch_problems(micro: int, mini: int, mini_per_process: int, world: int, group_size: int,
                          why: str | None) -> list[str]:
    """`ppo.micro_batch_size` divides each process's share of a mini-batch, and keeps whole groups where `why`."""
    if mini_per_process % micro:
        per = "" if world == 1 else f" (its {mini_per_process} rollouts per process)"
        return [f"ppo.micro_batch_size={micro} does not divide ppo.mini_batch_size={mini}{per}"]
    if why is not None and micro % group_size:
        # the loss is taken per forward pass: a split group loses its pairs
        return [f"ppo.micro_batch_size={micro} splits groups of rollout.group_size={group_size}, and {why} "
                f"compares rollouts within one forward pass; use a multiple of {group_size}"]
    return []


def _group_algorithm(cfg: DictConfig) -> str | None:
    """`algorithm=<name>` when that loss needs whole groups in each forward (`needs_whole_groups`), else None."""
    name = cfg.algorithm.get("name")
    return f"algorithm={name}" if name in ALGORITHMS and ALGORITHMS.get(name).needs_whole_groups else None


def _token_budget_problems(budget: int, max_new_tokens: int, group_size: int, why: str | None) -> list[str]:
    """The budget holds the longest possible rollout (a whole group of them when `why` names a part that
    compares a group's rollouts per forward). The prompt's length is known only once the data is
    tokenized: this checks the response part (plus a 1-token prompt), and packing names the exact
    number if a real rollout does not fit."""
    rows = group_size if why else 1
    longest = rows * (max_new_tokens + 1)
    if budget < longest:
        what = (f"a group of rollout.group_size={group_size} rollouts of rollout.max_new_tokens={max_new_tokens} "
                f"response tokens plus their prompt ({why} packs whole groups)") if rows > 1 else (
                f"one rollout of rollout.max_new_tokens={max_new_tokens} response tokens plus its prompt")
        return [f"ppo.max_tokens_per_micro_batch={budget} is smaller than the longest possible micro-batch unit: {what}; "
                f"use at least {rows} x (max_new_tokens + longest prompt), e.g. {rows * (max_new_tokens + 512)}, "
                "or null to use ppo.micro_batch_size"]
    return []
