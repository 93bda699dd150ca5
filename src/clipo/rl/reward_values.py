"""Reward values checked as they are converted: what a reward function returns becomes one float32 per
completion, or an error naming the function, the completion and the value.

A mapping is refused (it has a length, and reading it as a list would score its keys); each value must be
a number finite in float32 (a Python float of 1e39 is finite, and becomes inf in the float32 scores);
None is "does not apply". The weighted sum of a completion's scores must stay finite too.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from clipo.rl.reward_entries import SIGNATURE


class RewardFunctionError(RuntimeError):
    """A reward function raised, or returned something that is not one number (or None) per rollout."""


FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def checked_values(name: str, output: Any, n: int) -> list[float]:
    """The output as N floats (NaN for None), or an error naming the function and the first bad value: a value
    must be a number finite in float32 (scores are float32 tensors: 1e39 would become inf there)."""
    if isinstance(output, torch.Tensor):
        output = output.tolist()
    if isinstance(output, Mapping):  # it has a length, and iterating it would score its keys
        raise RewardFunctionError(f"reward function {name!r} returned a {type(output).__name__}; it must return a "
                                  f"list with one float (or None) per completion ({n}), in the completions' order, "
                                  f"as {SIGNATURE}")
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
        if not isinstance(value, numbers.Real) or isinstance(value, bool) or not abs(value) <= FLOAT32_MAX:
            why = "" if not isinstance(value, numbers.Real) or not math.isfinite(value) else (
                f", beyond float32's largest {FLOAT32_MAX:.4g} (rewards are float32)")
            raise RewardFunctionError(
                f"reward function {name!r} returned {value!r} ({type(value).__name__}) for completion {i} of {n}{why}; "
                "each value must be a finite number, or None where the function does not apply"
            )
        values.append(float(value))
    return values


def check_weighted_total(names: list[str], weights: torch.Tensor, scores: torch.Tensor) -> None:
    """The weighted sum of each completion's scores stays finite in float32, or an error naming the first that
    does not (`scores` [N, F], `weights` [F])."""
    total = (torch.nan_to_num(scores, nan=0.0) * weights).sum(-1)  # [N]
    if bool(torch.isfinite(total).all()):
        return
    i = int((~torch.isfinite(total)).nonzero()[0])
    terms = ", ".join(f"{n}: {float(v):.4g} x {float(w):g}" for n, v, w in zip(names, scores[i], weights))
    raise RewardFunctionError(f"the weighted reward of completion {i} of {len(total)} overflows float32 ({terms}); "
                              "scale the reward functions or reward_weights down")
