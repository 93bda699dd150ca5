"""Training data checked before a model loads: every set loads, and every ground truth is one the
verifier that will score it can use.

`train()` calls `check_data` right after building the datamodule: the train set is checked by the
run's verifier (`verifier=`, with its overrides), each validation set by its own (`data.val.<name>.verifier`).
A null, empty or unparsable ground truth is an error naming the set, its file, the record and the
value; with `data.skip_bad_rows=true` such records are dropped instead and counted in the log. The
per-truth test is the verifiers' own `ground_truth_problems`, the one `evaluate.py` checks with.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

from torch.utils.data import Subset

from clipo.config import ConfigError
from clipo.data.sources import build_dataset
from clipo.rollout.prompts import prompt_text

log = logging.getLogger(__name__)
SHOWN_PROBLEMS = 3  # bad records named in one message


class DataError(ConfigError):
    """A data set that cannot train or validate; the message names the set, file and record."""


def set_label(name: str, spec: dict) -> str:
    """`data.train (/path/x.parquet)`: the config key of a set and where its records come from."""
    where = spec.get("path") or spec.get("name") or spec.get("data_files")
    return f"data.{name}" + (f" ({where})" if where else "")


def load_set(name: str, spec: dict) -> Any:
    """`build_dataset(**spec)`, with any failure re-raised as a `DataError` naming the set and its file."""
    try:
        return build_dataset(**spec)
    except (OSError, ValueError, TypeError, RuntimeError) as error:
        hint = ""
        if type(error).__module__.startswith("pyarrow"):  # e.g. "Parquet magic bytes not found in footer"
            hint = ("; it is not a readable parquet file: give a verl-style .parquet file, or a json/csv file "
                    "with source=hub and a column mapping")
        where = spec.get("path") or spec.get("name")
        label = f"data.{name}" if where and str(where) in str(error) else set_label(name, spec)
        raise DataError(f"{label}: {error}{hint}") from error


def _missing(truth: Any) -> str | None:
    """What any verifier needs: a ground truth that is there."""
    if truth is None:
        return "the ground truth is null"
    return None if str(truth).strip() else "the ground truth is empty"


def record_problems(records: Any, verifier: Any) -> list[tuple[int, str]]:
    """(position, problem) of each record whose ground truth `verifier` cannot score against."""
    truths = [records[i].get("ground_truth") for i in range(len(records))]
    check = getattr(verifier, "ground_truth_problems", None)  # a user's own verifier may have none
    problems = check(truths) if check is not None else [_missing(truth) for truth in truths]
    named = lambda i, problem: truths[i] and repr(str(truths[i]))[:40] in problem  # noqa: E731 (value quoted already)
    return [(i, problem if named(i, problem) else f"ground truth {truths[i]!r:.120}: {problem}")
            for i, problem in enumerate(problems) if problem]


def describe(records: Any, bad: Sequence[tuple[int, str]]) -> str:
    """`record 4 (index 17): ground truth '': the ground truth is empty; ...` for the first few."""
    shown = []
    for position, problem in bad[:SHOWN_PROBLEMS]:
        index = records[position].get("index", position)
        shown.append(f"record {position}" + ("" if index == position else f" (index {index})") + f": {problem}")
    more = f"; and {len(bad) - SHOWN_PROBLEMS} more" if len(bad) > SHOWN_PROBLEMS else ""
    return "; ".join(shown) + more


def checked_set(name: str, spec: dict, records: Any, verifier: Any, skip_bad_rows: bool) -> Any:
    """`records` without bad ground truths (`skip_bad_rows`), or a `DataError` listing them."""
    bad = record_problems(records, verifier)
    if not bad:
        return records
    label, kind = set_label(name, spec), type(verifier).__name__
    if not skip_bad_rows:
        raise DataError(f"{label}: {len(bad)} of {len(records)} records have a ground truth the {kind} cannot "
                        f"score against: {describe(records, bad)}. Fix the data, choose the verifier that fits it, "
                        "or drop these records with data.skip_bad_rows=true")
    log.warning("%s: dropped %d of %d records whose ground truth the %s cannot score against (%s)",
                label, len(bad), len(records), kind, describe(records, bad))
    dropped = {position for position, _ in bad}
    keep = [i for i in range(len(records)) if i not in dropped]
    return [records[i] for i in keep] if isinstance(records, list) else Subset(records, keep)


def check_data(datamodule: Any, train_verifier: Any, val_verifiers: dict[str, Any], skip_bad_rows: bool = False,
               ) -> dict[str, int]:
    """Load the datamodule's train and validation sets, check them, and hand them to it (so they load once).

    Args:
        datamodule: a `PromptDataModule` whose sets are not loaded yet.
        train_verifier: the verifier that scores training rollouts.
        val_verifiers: the verifier of each validation set, by set name.
        skip_bad_rows: drop records with a bad ground truth instead of raising.

    Returns:
        records dropped per set (`train`, `val.<name>`), zeros included.
    """
    specs = {"train": datamodule.train_spec, **{f"val.{k}": v for k, v in datamodule.val_specs.items()}}
    dropped = {}
    for name, spec in specs.items():
        records = load_set(name, spec)
        verifier = train_verifier if name == "train" else val_verifiers[name.removeprefix("val.")]
        kept = checked_set(name, spec, records, verifier, skip_bad_rows)
        dropped[name] = len(records) - len(kept)
        if not len(kept):
            raise DataError(f"{set_label(name, spec)} has no records left to use; fix its ground truths")
        _replace_set(datamodule, name, kept)
    if len(datamodule.train_set) < datamodule.prompts_per_step:
        raise DataError(f"{set_label('train', datamodule.train_spec)} has {len(datamodule.train_set)} usable records, "
                        f"fewer than data.prompts_per_step={datamodule.prompts_per_step}; lower prompts_per_step "
                        "or add data")
    return dropped


def _replace_set(datamodule: Any, name: str, records: Any) -> None:
    """The records of set `name` (`train` or `val.<set>`) from now on."""
    if name == "train":
        datamodule.train_set = records
    else:
        datamodule.val_sets[name.removeprefix("val.")] = records


def prompt_token_limit(setting: Any, context: int | None, max_new_tokens: int) -> int | None:
    """`data.max_prompt_tokens`: `auto` is the model's context minus the response budget, null is no limit."""
    if setting is None:
        return None
    if setting == "auto":
        return None if context is None else max(context - max_new_tokens, 1)
    return int(setting)


def prompt_lengths(records: Any, tokenizer: Any) -> list[int]:
    """Tokens of each record's prompt as the engines build it (chat template, generation prompt)."""
    texts = [prompt_text(tokenizer, records[i]) for i in range(len(records))]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def drop_overlong_prompts(datamodule: Any, tokenizer: Any, max_tokens: int) -> dict[str, int]:
    """verl's `filter_overlong_prompts`: drop train and validation records whose prompt has more than
    `max_tokens` tokens, and log how many (a 100k-character prompt made one tiny-model step take 10 minutes).

    Returns:
        records dropped per set (`train`, `val.<name>`).
    """
    sets = {"train": datamodule.train_set, **{f"val.{k}": v for k, v in datamodule.val_sets.items()}}
    dropped = {}
    for name, records in sets.items():
        lengths = prompt_lengths(records, tokenizer)
        keep = [i for i, n in enumerate(lengths) if n <= max_tokens]
        dropped[name] = len(records) - len(keep)
        if not dropped[name]:
            continue
        log.warning("data.%s: dropped %d of %d prompts longer than data.max_prompt_tokens=%d tokens (longest %d)",
                    name, dropped[name], len(records), max_tokens, max(lengths))
        kept = [records[i] for i in keep] if isinstance(records, list) else Subset(records, keep)
        _replace_set(datamodule, name, kept)
    if len(datamodule.train_set) < datamodule.prompts_per_step:
        raise DataError(f"data.train has {len(datamodule.train_set)} prompts of at most data.max_prompt_tokens="
                        f"{max_tokens} tokens, fewer than data.prompts_per_step={datamodule.prompts_per_step}; raise "
                        "data.max_prompt_tokens (and the model's context) or use shorter prompts")
    return dropped


def check_training_data(cfg: Any, datamodule: Any, verifiers: tuple[Any, dict[str, Any]]) -> None:
    """Load the train and validation sets and check their ground truths with the verifiers that will score
    them (`clipo.data.checks`), before the model loads; a bad set closes the verifiers' worker pools."""
    train_verifier, val_verifiers = verifiers
    try:
        check_data(datamodule, train_verifier, val_verifiers, bool(cfg.data.get("skip_bad_rows", False)))
    except BaseException:
        for verifier in {id(v): v for v in [train_verifier, *val_verifiers.values()]}.values():
            verifier.close()
        raise
