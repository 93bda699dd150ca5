"""Reward functions: the configured verifier plus researchers' own, summed with weights.

    python src/clipo/train.py 'reward_funcs=[verifier,my_rewards:brevity]' 'reward_weights=[1.0,0.5]'

An entry of `reward_funcs` is `verifier` (the `verifier=` part), `module:function`, importable
from the working directory or PYTHONPATH, or a sequence-classification reward model (hub id or
folder, `clipo.rl.reward_model`). A function has TRL's reward signature and gets TRL's keywords
(`GRPOTrainer._calculate_rewards`), so TRL reward functions work unchanged:

    fn(prompts, completions, completion_ids=..., **dataset_columns) -> list[float | None]

`prompts` and `completions` follow TRL's convention (message lists and `[{"role": "assistant",
"content": text}]` for a conversational record, strings for a plain-text one), or clipo's text
convention for a function that declares it (`clipo.rl.reward_inputs`). `completion_ids` are the
responses' token ids (no padding); every column of the record (`ground_truth`, `data_source`,
`messages`, `solution`, ...) comes one value per rollout, plus `trainer_state` (the Lightning
trainer, or None), `log_metric(name, value)` and `log_extra(column, values)`. None means "does not
apply": NaN in the per-function scores, 0 in the weighted sum. A `module:function` entry runs in a
thread limited to `reward_timeout_s` seconds.

CLIPO's positives and the logged accuracy are the verifier's correct rollouts (score > 0.5),
never the sum; when `verifier` is not listed it is still scored, with weight 0.

Shapes: `N` rollouts, `F` reward functions.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from clipo.rl.reward_entries import (
    SIGNATURE,
    VERIFIER,
    entry_name,
    import_reward_function,
    is_model_entry,
    reward_config_problems,
)
from clipo.rl.reward_inputs import RESERVED, TEXT, completions_format, text_completions, trl_completions, trl_prompts
from clipo.rl.reward_model import RewardModel
from clipo.rl.reward_values import RewardFunctionError, check_weighted_total, checked_values
from clipo.run.ranks import phase
from clipo.run.stop_signals import ForcedStop

__all__ = ["VERIFIER", "RewardFunction", "RewardFunctionError", "RewardScorer", "RewardScores",
           "build_reward_functions", "entry_name", "import_reward_function", "reward_config_problems", "score_rollouts",
           "text_completions"]


@dataclass(frozen=True)
class RewardFunction:
    name: str  # `verifier`, the function's name or the reward model's (metrics `reward/<name>/mean`)
    fn: Callable[..., Sequence[Any]]
    weight: float
    text: bool = False  # clipo's text convention (prompt texts, response strings), else TRL's
    timeout_s: float | None = None  # a limit on one call (run in a thread); None runs it on this thread


def verifier_reward(verifier: Callable[[list[str], list[str]], list[float]]) -> Callable[..., list[float]]:
    """The verifier as a TRL-style reward function."""

    def verifier_fn(prompts: list[str], completions: list[str], ground_truth: list[str], **kwargs: Any) -> list[float]:
        return verifier(completions, ground_truth)

    return verifier_fn


def _reward_function(entry: str, weight: float, verifier: Callable, timeout_s: float | None) -> RewardFunction:
    """The verifier and a reward model run on the calling thread (the verifier has its own limits);
    a `module:function` runs under `timeout_s`."""
    if entry == VERIFIER:
        return RewardFunction(VERIFIER, verifier_reward(verifier), weight, text=True)
    if is_model_entry(entry):
        return RewardFunction(entry_name(entry), RewardModel(entry), weight)
    fn = import_reward_function(entry)
    return RewardFunction(entry_name(entry), fn, weight, completions_format(fn) == TEXT, timeout_s)


def build_reward_functions(entries: Sequence[str], weights: Sequence[float] | None, verifier: Callable,
                           timeout_s: float | None = None) -> list[RewardFunction]:
    """The configured functions with their weights (default 1); the verifier is added with weight 0
    when not listed, since it defines correctness. Loads the reward models."""
    problems = reward_config_problems(entries, weights, timeout_s)
    if problems:
        raise ValueError("; ".join(problems))
    weights = [1.0] * len(entries) if weights is None else [float(w) for w in weights]
    functions = [_reward_function(e, w, verifier, timeout_s) for e, w in zip(entries, weights)]
    if VERIFIER not in entries:
        functions.append(_reward_function(VERIFIER, 0.0, verifier, None))
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


def record_columns(rows: Sequence[dict]) -> dict[str, list[Any]]:
    """Every dataset column as one value per rollout (`rows`: each rollout's record), the keywords TRL passes;
    a column missing from a record gives None. `prompt` (TRL's `prompts`) and columns named like clipo's own
    keywords are left out, as TRL leaves out `prompt`."""
    keys = dict.fromkeys(k for record in rows for k in record if k not in RESERVED)
    return {k: [record.get(k) for record in rows] for k in keys}


def call_with_timeout(function: RewardFunction, kwargs: dict[str, Any]) -> Any:
    """`function.fn(**kwargs)`, in a daemon thread joined for at most `function.timeout_s` seconds.

    Python cannot stop a thread: a function past its limit keeps running in the background (its
    result is dropped) while the step fails. With no limit it runs on the calling thread, which a
    function using `signal.alarm` (math_verify's own timeouts) needs.
    """
    if function.timeout_s is None:
        return function.fn(**kwargs)
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["value"] = function.fn(**kwargs)
        except BaseException as error:  # noqa: BLE001 - handed to the calling thread
            result["error"] = error

    thread = threading.Thread(target=run, name=f"reward-{function.name}", daemon=True)
    thread.start()
    thread.join(function.timeout_s)
    if thread.is_alive():
        raise TimeoutError(f"did not return within reward_timeout_s={function.timeout_s:g} s (it keeps running in "
                           "a background thread); make it faster, or raise reward_timeout_s (null: no limit)")
    if "error" in result:
        raise result["error"]
    return result["value"]


def score_rollouts(
    functions: Sequence[RewardFunction],
    prompts: list[str],
    completions: list[str],
    completion_ids: list[list[int]],
    columns: dict[str, list[Any]],
    trainer_state: Any = None,
    trl_prompts: list[Any] | None = None,
) -> RewardScores:
    """Call every reward function on N rollouts (TRL's keywords) and collect their checked scores.

    Args:
        prompts, completions, completion_ids: N prompt texts (chat template applied), responses and
            response token ids.
        columns: dataset columns, N values each (`record_columns`); must hold `ground_truth`.
        trl_prompts: N prompts in TRL's convention (`clipo.rl.reward_inputs.trl_prompts`): message
            lists make the batch conversational. None: every function gets the texts.

    Raises:
        RewardFunctionError: a function raised, ran past its time limit or returned a bad value;
            the step cannot go on.
    """
    n = len(completions)
    logged: dict[str, list[float]] = {}
    extra: dict[str, list[Any]] = {}

    def log_metric(name: str, value: float) -> None:
        logged.setdefault(name, []).append(float(value))

    def log_extra(column: str, values: list[Any]) -> None:
        extra[column] = list(values)

    kwargs = {**columns, "trainer_state": trainer_state, "log_metric": log_metric, "log_extra": log_extra}
    as_text = {"prompts": prompts, "completions": completions}
    as_trl = as_text if trl_prompts is None else {
        "prompts": trl_prompts, "completions": trl_completions(completions, isinstance(trl_prompts[0], list))}
    rows, seconds = [], {}
    for function in functions:
        start = time.perf_counter()
        inputs = {**(as_text if function.text else as_trl), "completion_ids": completion_ids, **kwargs}
        rows.append(checked_values(function.name, _call(function, inputs), n))
        seconds[function.name] = time.perf_counter() - start
    scores = torch.tensor(rows, dtype=torch.float32).T.reshape(n, len(functions))  # [N, F]
    verifier = [f.name for f in functions].index(VERIFIER)
    extra = {k: v for k, v in extra.items() if len(v) == n}  # a column not one per rollout cannot be shown
    weights = torch.tensor([f.weight for f in functions], dtype=torch.float32)
    names = [f.name for f in functions]
    check_weighted_total(names, weights, scores)
    return RewardScores(names, weights, scores, scores[:, verifier] > 0.5, list(prompts), seconds, logged, extra)


def _call(function: RewardFunction, inputs: dict[str, Any]) -> Any:
    """`function`'s output on `inputs`; whatever it raises becomes a `RewardFunctionError` naming it, a
    `SystemExit` or `KeyboardInterrupt` of its own too (a second stop signal, `ForcedStop`, goes on)."""
    try:
        with phase(f"reward {function.name}"):
            return call_with_timeout(function, inputs)
    except ForcedStop:
        raise
    except (Exception, SystemExit, KeyboardInterrupt) as error:
        said = f": {error}" if str(error) else ""
        raise RewardFunctionError(
            f"reward function {function.name!r} raised {type(error).__name__}{said} (signature: {SIGNATURE})"
        ) from error


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
    """

    def __init__(self, functions: Sequence[RewardFunction]) -> None:
        self.functions = list(functions)

    def __call__(self, records: Sequence[dict], rollouts: Any, trainer_state: Any = None) -> RewardScores:
        """Scores of `rollouts` (a `RolloutBatch` whose `groups` index `records`), each function seeing the prompt
        text the policy saw (`rollouts.prompts`) and its rollout's record's columns."""
        rows = [records[g] for g in rollouts.groups.tolist()]
        ids = rollouts.response_ids.masked_fill(~rollouts.response_mask, -1).tolist()  # one transfer, then per row
        completion_ids = [[t for t in row if t >= 0] for row in ids]
        for function in self.functions:  # reward models score on the policy's device
            if isinstance(function.fn, RewardModel):
                function.fn.to(rollouts.response_ids.device)
        return score_rollouts(self.functions, rollouts.prompts, rollouts.responses, completion_ids,
                              record_columns(rows), trainer_state, trl_prompts(rows))
