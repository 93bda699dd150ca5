"""Entries of `reward_funcs`: `verifier`, `module:function`, or a reward model (hub id or folder),
checked before any model loads."""

from __future__ import annotations

import importlib
import math
import numbers
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

VERIFIER = "verifier"
SIGNATURE = "fn(prompts, completions, completion_ids=..., ground_truth=..., **kwargs) -> list[float | None]"
FORMS = "`verifier`, `module:function` (e.g. my_rewards:brevity) or a reward model (hub id org/name or a local folder)"


def is_model_entry(entry: str) -> bool:
    """A reward model: no `module:function` colon, and a hub id (`org/name`) or an existing folder."""
    return entry != VERIFIER and ":" not in entry and ("/" in entry or Path(entry).expanduser().is_dir())


def import_reward_function(entry: str) -> Callable[..., Sequence[Any]]:
    """The callable named by `module:function` (`function` may be dotted, e.g. `Class.method`).

    The working directory is importable, as with `python -m`, even when the entry point is
    `python src/clipo/train.py` (which puts only `src/clipo` on the path).

    Raises:
        ValueError: the entry is malformed, does not import, or is not callable.
    """
    module_name, sep, attribute = entry.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"reward function {entry!r} must be {FORMS}")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.append(cwd)
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as error:  # noqa: BLE001 - any import failure gets the same advice
        raise ValueError(
            f"reward function {entry!r}: module {module_name!r} does not import ({type(error).__name__}: {error}); "
            "put it in the working directory or on PYTHONPATH"
        ) from error
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"reward function {entry!r}: {obj.__name__ if hasattr(obj, '__name__') else obj!r} "
                             f"has no attribute {part!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"reward function {entry!r} is a {type(obj).__name__}, not a function with signature {SIGNATURE}")
    return obj


def entry_name(entry: str) -> str:
    """The metric name of an entry: `verifier`, the last part of `module:function`, or of a model's id or path."""
    if entry == VERIFIER:
        return VERIFIER
    if is_model_entry(entry):
        return Path(entry.rstrip("/")).name
    return entry.partition(":")[2].rsplit(".", 1)[-1]


def _model_problem(entry: str) -> str | None:
    """Why the reward model `entry` cannot load (its config is read, not its weights), or None."""
    from transformers import AutoConfig

    if entry.startswith((".", "/", "~")) and not Path(entry).expanduser().is_dir():
        return f"reward model folder {entry!r} does not exist ({Path(entry).expanduser().resolve()})"
    try:
        AutoConfig.from_pretrained(entry)
    except Exception as error:  # noqa: BLE001 - any failure gets the same advice
        return (f"reward model {entry!r} does not load ({type(error).__name__}: {str(error)[:200]}); give a folder "
                "with a sequence-classification model's config.json, or a hub id in the local cache when offline")
    return None


def _entry_problem(entry: Any) -> str | None:
    if not isinstance(entry, str):
        return f"reward_funcs entry {entry!r} must be a string: {FORMS}"
    if entry == VERIFIER:
        return None
    if is_model_entry(entry):
        return _model_problem(entry)
    try:
        import_reward_function(entry)
    except ValueError as error:
        return str(error)
    return None


def reward_config_problems(entries: Any, weights: Any, timeout_s: Any = None) -> list[str]:
    """Problems with `reward_funcs` / `reward_weights` / `reward_timeout_s`, found before any model
    loads (imports each function, reads each reward model's config)."""
    if isinstance(entries, str) or not isinstance(entries, Sequence) or not entries:
        return [f"reward_funcs={entries!r} must be a non-empty list, e.g. [verifier] or [verifier,my_rewards:brevity]"]
    problems = [p for p in map(_entry_problem, entries) if p]
    names = [entry_name(e) for e in entries if isinstance(e, str)]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        problems.append(f"reward_funcs names {', '.join(duplicates)} more than once; each function's metrics are "
                        "logged under its name, so list each once (rename one of the functions)")
    if weights is not None:
        if isinstance(weights, str) or not isinstance(weights, Sequence) or len(weights) != len(entries):
            problems.append(f"reward_weights={list(weights) if isinstance(weights, Sequence) else weights!r} needs one "
                            f"number per reward_funcs entry ({len(entries)}: {list(entries)}), or null for all 1")
        elif not all(isinstance(w, numbers.Real) and not isinstance(w, bool) and math.isfinite(w) for w in weights):
            problems.append(f"reward_weights={list(weights)} must be finite numbers")
    if timeout_s is not None and not (isinstance(timeout_s, numbers.Real) and not isinstance(timeout_s, bool)
                                      and math.isfinite(timeout_s) and timeout_s > 0):
        problems.append(f"reward_timeout_s={timeout_s!r} must be a positive number of seconds, or null for no limit")
    return problems
