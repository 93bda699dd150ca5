"""Resuming is continuing the same run: the checkpoint is found, read and compared before any model loads.

- `ckpt_path=last` is the newest `last*.ckpt` of the run's checkpoint folder; with none there it is an
  error, unless `resume.missing=fresh` asks for a fresh start.
- A checkpoint that cannot be read (damaged: a CRC that does not match, truncated) or that clipo did not
  write is an error that says so, instead of a torch unpickling message from deep inside Lightning, or
  of training on flipped weights (`clipo.run.integrity`; `resume.verify=false` skips the check).
- A checkpoint folder (DeepSpeed, FSDP) is read as a file is: its steps, saved config and W&B run,
  so the logs continue from it as from a file; a strategy that cannot load it is named.
- The checkpoint's saved config (`ClipoModule.on_save_checkpoint` stores it) is compared with this
  run's on what shapes the weights and the objective: the model, the contrastive loss, head, pooler
  and mode. A difference is an error listing each one, unless `resume.allow_changes` names it.

`clipo.run.checkpoint_header` reads the checkpoint (tensors memory-mapped).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from clipo.config import ConfigError
from clipo.config.batches import world_size
from clipo.contrastive.modes import ContrastiveMode
from clipo.run.checkpoint_header import read_header, strategy_problem

# model settings that change how the same weights run, not which weights they are
RUNTIME_MODEL_KEYS = ("gradient_checkpointing", "attn_implementation", "dtype")
COMPARED = ("model", "loss.name", "head", "pooler", "contrastive.mode")


@dataclass
class Resume:
    """A checkpoint this run continues: its file or folder, the RL steps it holds (-1: unknown here, for
    Lightning's own lookups), and the W&B run it logged to."""

    path: str
    step: int
    wandb_id: str | None = None


def checkpoint_dir(cfg: DictConfig) -> Path:
    checkpoint = (cfg.get("callbacks") or {}).get("model_checkpoint") or {}
    return Path(checkpoint.get("dirpath") or Path(cfg.paths.output_dir) / "checkpoints")


def resolve_ckpt_path(cfg: DictConfig) -> str | None:
    """The checkpoint file `ckpt_path` means (`last`: the newest last*.ckpt of the run), or None to start fresh."""
    given = cfg.get("ckpt_path")
    if given is None or given in ("hpc", "registry") or str(given).startswith("registry:"):
        return given  # Lightning's own lookups (SLURM's hpc checkpoints)
    missing = (cfg.get("resume") or {}).get("missing", "error")
    if given == "last":
        folder = checkpoint_dir(cfg)
        found = sorted(folder.glob("last*.ckpt"), key=lambda p: p.lstat().st_mtime) if folder.is_dir() else []
        if found and not found[-1].exists():  # a symbolic link to a checkpoint that is gone
            raise ConfigError(f"ckpt_path=last: {found[-1]} is a link to {os.readlink(found[-1])}, which does not "
                              "exist; point it at a checkpoint, pass ckpt_path=<checkpoint file or folder>, or start "
                              "fresh with ckpt_path=null")
        if found:
            return str(found[-1])
        if missing == "fresh":
            return None
        raise ConfigError(f"ckpt_path=last: no last.ckpt in {folder}, so there is nothing to continue; check "
                          "hydra.run.dir names the run folder, or start this run fresh on purpose with "
                          "resume.missing=fresh (or ckpt_path=null)")
    if not Path(given).exists():
        raise ConfigError(f"ckpt_path={given} does not exist; pass a checkpoint file (<run>/checkpoints/last.ckpt), "
                          "ckpt_path=last with hydra.run.dir=<run>, or ckpt_path=null to start fresh")
    return str(given)


def _select(config: dict, key: str) -> Any:
    for part in key.split("."):
        config = config.get(part) if isinstance(config, dict) else None
    return config


def _compared_values(config: dict) -> dict[str, Any]:
    """The compared settings of a (plain, resolved) run config, flattened to dotted keys."""
    values: dict[str, Any] = {}
    for key in COMPARED:
        if key == "contrastive.mode":
            loss, mode = _select(config, "loss.name"), _select(config, "contrastive.mode")
            try:
                values[key] = ContrastiveMode.resolve(loss, mode).value
            except ValueError:
                values[key] = mode
            continue
        value = _select(config, key)
        if isinstance(value, dict):
            values |= {f"{key}.{k}": v for k, v in _flatten(value).items()
                       if not (key == "model" and k.split(".")[0] in RUNTIME_MODEL_KEYS)}
        else:
            values[key] = value
    return values


def _flatten(node: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in node.items():
        if isinstance(value, dict) and value:
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_differences(saved: dict, current: dict, allowed: list[str]) -> list[str]:
    """`key: checkpoint -> this run` for each compared setting that differs and is not under an allowed key."""
    before, after = _compared_values(saved), _compared_values(current)
    changed = []
    for key in sorted(set(before) | set(after)):
        if before.get(key) != after.get(key) and not any(key == a or key.startswith(f"{a}.") for a in allowed):
            changed.append(f"{key}: {before.get(key)!r} (checkpoint) -> {after.get(key)!r} (this run)")
    return changed


def prepare_resume(cfg: DictConfig, run_config: dict) -> Resume | None:
    """The checkpoint this run continues, read and checked against `run_config` (the run's resolved config);
    None for a fresh start. Raises `ConfigError` for a missing, unreadable, foreign or different checkpoint."""
    path = resolve_ckpt_path(cfg)
    if path is None or path in ("hpc", "registry") or path.startswith("registry:"):
        return None if path is None else Resume(path, -1)  # Lightning's lookups
    resume = cfg.get("resume") or {}
    checkpoint = read_header(path, verify=bool(resume.get("verify", True)))
    if problem := strategy_problem(Path(path), checkpoint, cfg.strategy, world_size(cfg)):
        raise ConfigError(problem)
    saved = (checkpoint.get("clipo") or {}).get("config") or {}
    allowed = [str(k) for k in resume.get("allow_changes") or []]
    if saved and (changed := config_differences(saved, run_config, allowed)):
        keys = ",".join(sorted({c.split(":")[0] for c in changed}))
        raise ConfigError(f"ckpt_path={path} was trained with a different setup, so its weights or head would not "
                          "fit (or would be silently dropped):\n    " + "\n    ".join(changed) +
                          "\n  Resume with the checkpoint's settings, start a fresh run (ckpt_path=null, another "
                          f"hydra.run.dir), or accept the change on purpose with resume.allow_changes=[{keys}]")
    wandb_id = ((checkpoint.get("callbacks") or {}).get("RunSummary") or {}).get("wandb_id")
    return Resume(path, int(checkpoint.get("global_step", 0)), wandb_id)
