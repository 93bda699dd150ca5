"""Reward functions: the configured verifier plus researchers' own, summed with weights.

    python src/clipo/train.py 'reward_funcs=[verifier,my_rewards:brevity]' 'reward_weights=[1.0,0.5]'

An entry of `reward_funcs` is `verifier` (the `verifier=` part) or `module:function`, importable
from the working directory or PYTHONPATH. A function has TRL's reward signature, so TRL reward
functions work unchanged (TRL's `GRPOTrainer._calculate_rewards` passes the same keywords):

    fn(prompts, completions, completion_ids=..., ground_truth=..., **dataset_columns) -> list[float | None]

`prompts` are the prompt texts the policy saw (chat template applied), `completions` the decoded
responses, `completion_ids` their token ids (no padding), every dataset column (`ground_truth`,
`data_source`, `messages`, ...) one value per rollout, plus `trainer_state` (the Lightning
trainer, or None), `log_metric(name, value)` and `log_extra(column, values)`. None means "does not
apply": NaN in the per-function scores, 0 in the weighted sum.

CLIPO's positives and the logged accuracy are the verifier's correct rollouts (score > 0.5),
never the sum; when `verifier` is not listed it is still scored, with weight 0.

Shapes: `N` rollouts, `F` reward functions.
"""

from __future__ import annotations

import importlib
import math
import numbers
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

from clipo.rollout.prompts import prompt_text

VERIFIER = "verifier"
SIGNATURE = "fn(prompts, completions, completion_ids=..., ground_truth=..., **kwargs) -> list[float | None]"


class RewardFunctionError(RuntimeError):
    """A reward function raised, or returned something that is not one number (or None) per rollout."""


@dataclass(frozen=True)
class RewardFunction:
    name: str  # `verifier`, or the function's name (metrics `reward/<name>/mean`)
    fn: Callable[..., Sequence[Any]]
    weight: float


def import_reward_function(entry: str) -> Callable[..., Sequence[Any]]:
    """The callable named by `module:function` (`function` may be dotted, e.g. `Class.method`).

    The working directory is importable, as with `python -m`, even when the entry point is
    `python src/clipo/train.py` (which puts only `src/clipo` on the path).

    Raises:
        ValueError: the entry is malformed, does not import, or is not callable.
    """
    module_name, sep, attribute = entry.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"reward function {entry!r} must be `verifier` or `module:function` (e.g. my_rewards:brevity)")
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
    """The metric name of an entry: `verifier`, or the last part of `module:function`."""
    return VERIFIER if entry == VERIFIER else entry.partition(":")[2].rsplit(".", 1)[-1]


def reward_config_problems(entries: Any, weights: Any) -> list[str]:
    """Problems with `reward_funcs` / `reward_weights`, found before any model loads (imports each function)."""
    if isinstance(entries, str) or not isinstance(entries, Sequence) or not entries:
        return [f"reward_funcs={entries!r} must be a non-empty list, e.g. [verifier] or [verifier,my_rewards:brevity]"]
    problems = []
    for entry in entries:
        if not isinstance(entry, str):
            problems.append(f"reward_funcs entry {entry!r} must be a string: `verifier` or `module:function`")
        elif entry != VERIFIER:
            try:
                import_reward_function(entry)
            except ValueError as error:
                problems.append(str(error))
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
    return problems


def verifier_reward(verifier: Callable[[list[str], list[str]], list[float]]) -> Callable[..., list[float]]:
    """The verifier as a TRL-style reward function."""

    def verifier_fn(prompts: list[str], completions: list[str], ground_truth: list[str], **kwargs: Any) -> list[float]:
        return verifier(completions, ground_truth)

    return verifier_fn


def build_reward_functions(entries: Sequence[str], weights: Sequence[float] | None, verifier: Callable) -> list[RewardFunction]:
    """The configured functions with their weights (default 1); the verifier is added with weight 0
    when not listed, since it defines correctness."""
    problems = reward_config_problems(entries, weights)
    if problems:
        raise ValueError("; ".join(problems))
    weights = [1.0] * len(entries) if weights is None else [float(w) for w in weights]
    functions = [
        RewardFunction(entry_name(e), verifier_reward(verifier) if e == VERIFIER else import_reward_function(e), w)
        for e, w in zip(entries, weights)
    ]
    if VERIFIER not in entries:
        functions.append(RewardFunction(VERIFIER, verifier_reward(verifier), 0.0))
    return functions


@dataclass
class RewardScores:
    """Scores of N rollouts by F reward functions."""

    names: list[str]  # F
    weights: torch.Tensor  # [F]
    scores: torch.Tensor  # [N, F] float32; NaN where a function returned None
    correct: torch.Tensor  # [N] bool: the verifier's score > 0.5
    prompts: list[str]  # N prompt texts the functions saw
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per function
    logged: dict[str, list[float]] = field(default_factory=dict)  # values passed to `log_metric`
    extra: dict[str, list[Any]] = field(default_factory=dict)  # N-long columns passed to `log_extra`

    @property
    def total(self) -> torch.Tensor:
        """[N] the weighted sum, a None (NaN) counting as 0."""
        return (torch.nan_to_num(self.scores, nan=0.0) * self.weights).sum(-1)

    def select(self, index: torch.Tensor) -> RewardScores:
        pick = index.tolist()
        extra = {k: [v[i] for i in pick] for k, v in self.extra.items()}
        return RewardScores(self.names, self.weights, self.scores[index], self.correct[index],
                            [self.prompts[i] for i in pick], self.seconds, self.logged, extra)


def concat_scores(parts: Sequence[RewardScores]) -> RewardScores:
    """One `RewardScores` from several batches (e.g. DAPO refills); times and logged values add up.
    An extra column missing from a part is filled with None."""
    first = parts[0]
    seconds: dict[str, float] = {}
    logged: dict[str, list[float]] = {}
    for part in parts:
        for k, v in part.seconds.items():
            seconds[k] = seconds.get(k, 0.0) + v
        for k, v in part.logged.items():
            logged.setdefault(k, []).extend(v)
    columns = dict.fromkeys(k for part in parts for k in part.extra)
    extra = {k: [x for p in parts for x in p.extra.get(k, [None] * len(p.correct))] for k in columns}
    return RewardScores(first.names, first.weights, torch.cat([p.scores for p in parts]),
                        torch.cat([p.correct for p in parts]), [x for p in parts for x in p.prompts], seconds, logged, extra)


def repeat_columns(records: Sequence[dict], group_size: int) -> dict[str, list[Any]]:
    """Every dataset column as one value per rollout (each record repeated `group_size` times),
    the keywords TRL passes; a column missing from a record gives None."""
    keys = dict.fromkeys(k for record in records for k in record)
    return {k: [record.get(k) for record in records for _ in range(group_size)] for k in keys}


def _checked(name: str, output: Any, n: int) -> list[float]:
    """The output as N floats (NaN for None), or an error naming the function and the first bad value."""
    if isinstance(output, torch.Tensor):
        output = output.tolist()
    if isinstance(output, (str, bytes)) or not isinstance(output, Sequence) and not hasattr(output, "__len__"):
        raise RewardFunctionError(f"reward function {name!r} returned a {type(output).__name__}; it must return a "
                                  f"list with one float (or None) per completion ({n}), as {SIGNATURE}")
    output = list(output)
    if len(output) != n:
        raise RewardFunctionError(f"reward function {name!r} returned {len(output)} values for {n} completions")
    values = []
    for i, value in enumerate(output):
        if value is None:
            values.append(math.nan)
            continue
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise RewardFunctionError(
                f"reward function {name!r} returned {value!r} ({type(value).__name__}) for completion {i}; each value "
                "must be a finite number, or None where the function does not apply"
            )
        values.append(float(value))
    return values


def score_rollouts(
    functions: Sequence[RewardFunction],
    prompts: list[str],
    completions: list[str],
    completion_ids: list[list[int]],
    columns: dict[str, list[Any]],
    trainer_state: Any = None,
) -> RewardScores:
    """Call every reward function on N rollouts (TRL's keywords) and collect their checked scores.

    Args:
        prompts, completions, completion_ids: N prompt texts, responses and response token ids.
        columns: dataset columns, N values each (`repeat_columns`); must hold `ground_truth`.

    Raises:
        RewardFunctionError: a function raised or returned a bad value; the step cannot go on.
    """
    n = len(completions)
    logged: dict[str, list[float]] = {}
    extra: dict[str, list[Any]] = {}

    def log_metric(name: str, value: float) -> None:
        logged.setdefault(name, []).append(float(value))

    def log_extra(column: str, values: list[Any]) -> None:
        extra[column] = list(values)

    kwargs = {**columns, "trainer_state": trainer_state, "log_metric": log_metric, "log_extra": log_extra}
    rows, seconds = [], {}
    for function in functions:
        start = time.perf_counter()
        try:
            output = function.fn(prompts=prompts, completions=completions, completion_ids=completion_ids, **kwargs)
        except Exception as error:
            raise RewardFunctionError(
                f"reward function {function.name!r} raised {type(error).__name__}: {error} (signature: {SIGNATURE})"
            ) from error
        seconds[function.name] = time.perf_counter() - start
        rows.append(_checked(function.name, output, n))
    scores = torch.tensor(rows, dtype=torch.float32).T.reshape(n, len(functions))  # [N, F]
    verifier = [f.name for f in functions].index(VERIFIER)
    extra = {k: v for k, v in extra.items() if len(v) == n}  # a column not one per rollout cannot be shown
    weights = torch.tensor([f.weight for f in functions], dtype=torch.float32)
    names = [f.name for f in functions]
    return RewardScores(names, weights, scores, scores[:, verifier] > 0.5, list(prompts), seconds, logged, extra)


def reward_metrics(scores: RewardScores) -> dict[str, torch.Tensor]:
    """`reward/<name>/mean` and `/std` (population std) over the rollouts the function applied to
    (0 when it applied to none), plus `log_metric` values averaged."""
    metrics = {}
    for j, name in enumerate(scores.names):
        column = scores.scores[:, j]
        applied = column[~column.isnan()]
        mean = applied.mean() if applied.numel() else torch.zeros(())
        std = applied.std(unbiased=False) if applied.numel() else torch.zeros(())
        metrics[f"reward/{name}/mean"], metrics[f"reward/{name}/std"] = mean, std
    metrics |= {name: torch.tensor(sum(v) / len(v)) for name, v in scores.logged.items()}
    return metrics


class RewardScorer:
    """Scores a batch of rollouts with the reward functions, giving each TRL's keywords.

    Args:
        functions: from `build_reward_functions` (the verifier among them).
        prompt_text: a prompt record -> the text the policy saw (its chat template applied).
    """

    def __init__(self, functions: Sequence[RewardFunction], prompt_text: Callable[[dict], str]) -> None:
        self.functions, self.prompt_text = list(functions), prompt_text

    def __call__(self, records: Sequence[dict], rollouts: Any, group_size: int, trainer_state: Any = None) -> RewardScores:
        """Scores of `rollouts` (a `RolloutBatch`: `group_size` rollouts per record, in order)."""
        texts = [self.prompt_text(record) for record in records]
        prompts = [text for text in texts for _ in range(group_size)]
        ids = rollouts.response_ids.masked_fill(~rollouts.response_mask, -1).tolist()  # one transfer, then per row
        completion_ids = [[t for t in row if t >= 0] for row in ids]
        return score_rollouts(self.functions, prompts, rollouts.responses, completion_ids,
                              repeat_columns(records, group_size), trainer_state)


def chat_prompt(tokenizer: Any) -> Callable[[dict], str]:
    """A record's prompt text as the engines build it: its messages with the generation prompt."""
    return partial(prompt_text, tokenizer)
