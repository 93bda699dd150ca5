"""Keys a user adds with `+key=value` that nothing reads are typos: name the key they meant.

Hydra's own advice for a mistyped key (`rollout.grup_size=4`) is to add it with `+`, and the
run then silently keeps the default group size. Only keys added with `+` are looked at (Hydra
refuses `+key` for a key that exists, so each is new to the composed defaults); `++key=value`
forces a key in on purpose and is left alone. Where an added key lands decides:

- nodes whose keys are handed on as keyword arguments accept what their receiver takes: the
  Trainer (`trainer.*`), the model loader (`model.*`), each registered part (`loss.*`, `head.*`,
  `pooler.*`, `advantage.*`, `algorithm.*`, `verifier.*`: the registered class's arguments), any
  node with a `_target_` (optimizers, strategies, loggers, callbacks: the target's arguments, its
  base classes' too where it passes `**kwargs` on), and each data set (`data.train`, `data.val.<set>`:
  its source's arguments);
- a receiver that takes any keyword, the vLLM settings, the tiny model's, `paths` and `hydra` take
  anything (free-form, or checked by their consumer before the model loads);
- every other node (`rollout`, `ppo`, `contrastive`, `validation`, the top level, ...) is read key
  by key by clipo, so a new key there is read by nothing.

An added config group (`+benchmark@data.val.gsm8k=gsm8k`) is not a key and is never questioned.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from clipo.compose import CONFIG_DIR

# first key parts under which added keys are free-form (checked by their consumer, or by nobody); a node with a
# `_target_` or a data set among them is checked against its receiver first (`_node_arguments`)
OPEN_PREFIXES = ("data.train", "data.val", "optimizer", "contrastive.head_pooler_optimizer", "strategy", "logger",
                 "callbacks", "rollout.vllm", "paths", "hydra", "model.tiny", "local", "experiment", "debug")
# keys Hydra's `instantiate` reads itself
INSTANTIATE_KEYS = {"_target_", "_partial_", "_convert_", "_recursive_", "_args_"}
# keys of a data set spec that are not its source's arguments (`clipo.evaluation.scoring.split_set_spec`)
SET_SPEC_KEYS = {"source", "verifier", "twins", "hub"}


def _registered_arguments(kind: str) -> Callable[[DictConfig], set[str] | None]:
    def arguments(cfg: DictConfig) -> set[str] | None:
        from clipo import registry

        table = {"loss": registry.LOSSES, "head": registry.HEADS, "pooler": registry.POOLERS,
                 "advantage": registry.ADVANTAGES, "algorithm": registry.ALGORITHMS, "verifier": registry.VERIFIERS}[kind]
        name = OmegaConf.select(cfg, f"{kind}.name")
        return _parameters(table.get(name)) if name in table else None
    return arguments


def _trainer_arguments(cfg: DictConfig) -> set[str]:
    import lightning as L

    return _parameters(L.Trainer)


def _model_arguments(cfg: DictConfig) -> set[str]:
    from clipo.models import load_model

    return _parameters(load_model)


def _parameters(target: Any) -> set[str] | None:
    """The keyword arguments `target` takes; for a class whose `__init__` passes `**kwargs` on, its bases'
    too (until one that takes no `**kwargs`); None when it takes any keyword."""
    names: set[str] = set()
    for owner in inspect.getmro(target) if inspect.isclass(target) else (target,):
        init = owner.__init__ if inspect.isclass(target) else owner
        if inspect.isclass(target) and "__init__" not in vars(owner):
            continue
        try:
            parameters = inspect.signature(init).parameters.values()
        except (TypeError, ValueError):  # no signature to read (a builtin)
            return None
        names |= {p.name for p in parameters if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)} - {"self"}
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
            return names
    return None  # takes anything


def _target_arguments(node: Any) -> set[str] | None:
    """What a `_target_` node accepts, or None (anything, or a target that does not import: its builder says so)."""
    from hydra.utils import get_object

    try:
        target = get_object(str(node._target_))
    except Exception:  # noqa: BLE001
        return None
    accepted = _parameters(target)
    return None if accepted is None else accepted | INSTANTIATE_KEYS


def _set_arguments(node: Any) -> set[str] | None:
    """What a data set spec accepts: its source's arguments and the spec's own keys."""
    from clipo.data.sources import DATA_SOURCES

    source = node.get("source")
    if source not in DATA_SOURCES:
        return None  # the config check names the unknown source
    accepted = _parameters(DATA_SOURCES.get(source))
    return None if accepted is None else accepted | SET_SPEC_KEYS


def _node_arguments(cfg: DictConfig, parent: str) -> set[str] | None | bool:
    """What the node `parent` accepts when it is a `_target_` node or a data set (None: anything), else False."""
    node = OmegaConf.select(cfg, parent) if parent else None
    if not isinstance(node, DictConfig):
        return False
    if "_target_" in node:
        return _target_arguments(node)
    if parent == "data.train" or parent.startswith("data.val.") and parent.count(".") == 2:
        return _set_arguments(node)
    return False


# nodes whose keys are keyword arguments of something: the names it accepts (None: anything)
RECEIVERS: dict[str, Callable[[DictConfig], set[str] | None]] = {
    "trainer": _trainer_arguments, "model": _model_arguments,
    **{kind: _registered_arguments(kind) for kind in ("loss", "head", "pooler", "advantage", "algorithm", "verifier")},
}


def added_keys(overrides: list[str]) -> list[tuple[str, str]]:
    """(key, override text) of each `+key=value` override that adds a plain key (not a config group)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType

    added = []
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group
        if override.type is OverrideType.ADD and override.package is None and not (CONFIG_DIR / key).is_dir():
            added.append((key, override.input_line or key))
    return added


def leaf_keys(node: Any, prefix: str = "") -> list[str]:
    """Dotted keys of every value in a config (interpolations unresolved)."""
    if not isinstance(node, DictConfig):
        return [prefix.rstrip(".")]
    keys = []
    for key in node.keys():
        if key == "hydra" and not prefix:
            continue
        child = node._get_node(key)
        keys += leaf_keys(child, f"{prefix}{key}.") if isinstance(child, DictConfig) else [f"{prefix}{key}"]
    return keys


def unread_key_problem(cfg: DictConfig, key: str, override: str, known: list[str]) -> str | None:
    """Why the added `key` is read by nothing (with the closest existing key), or None when something reads it."""
    parent, _, leaf = key.rpartition(".")
    receiver = RECEIVERS.get(parent)
    if (accepted := _node_arguments(cfg, parent)) is not False:
        if accepted is None or leaf in accepted:
            return None
        known = known + [f"{parent}.{name}" for name in accepted]
    elif any(key == p or key.startswith(f"{p}.") for p in OPEN_PREFIXES):
        return None
    elif receiver is not None:
        accepted = receiver(cfg)
        if accepted is None or leaf in accepted:
            return None
        known = known + [f"{parent}.{name}" for name in accepted]
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if not close:
        hint = "; check the spelling against configs/train.yaml and its groups"
    elif OmegaConf.select(cfg, close[0], default="__absent__") != "__absent__":
        hint = f"; did you mean {close[0]}? (override an existing key without '+': {close[0]}=...)"
    else:
        hint = f"; did you mean {close[0]}? (add it with +{close[0]}=...)"
    where = f"{parent} has no key {leaf!r}" if parent else f"the config has no top-level key {leaf!r}"
    return f"{override} adds a key that nothing reads ({where}){hint}"


def unknown_key_problems(cfg: DictConfig) -> list[str]:
    """A problem for each `+key=value` of this run that nothing would read."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    overrides = list(HydraConfig.get().overrides.task)
    added = added_keys(overrides)
    if not added:
        return []
    new = {key for key, _ in added}
    known = [k for k in leaf_keys(cfg) if k not in new]
    return [p for key, text in added if (p := unread_key_problem(cfg, key, text, known)) is not None]
