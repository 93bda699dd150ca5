"""What a reward function gets as `prompts` and `completions`: TRL's convention, or clipo's texts.

TRL's convention (`GRPOTrainer`), the default: for a conversational record (its prompt a list of
chat messages, as every `arith` and verl record) `prompts` are the message lists the policy saw
and each completion is `[{"role": "assistant", "content": text}]`; for a plain-text record (a
dataset whose prompt column holds strings) both are strings: the prompt text before the chat
template, and the decoded response. As in TRL, the first record of a batch decides for the batch.

clipo's text convention: `prompts` are the prompt texts the policy saw (chat template applied)
and `completions` the decoded responses, whatever the record. A function takes it when it says
so: decorated with `@text_completions`, or with `completions` annotated `list[str]` (or
`Sequence[str]`).
"""

from __future__ import annotations

import collections.abc
import inspect
import re
import typing
from collections.abc import Callable, Sequence
from typing import Any

TEXT, TRL = "text", "trl"
# keywords clipo passes itself: a dataset column of one of these names is not passed as a column
RESERVED = ("prompt", "prompts", "completions", "completion_ids", "trainer_state", "log_metric", "log_extra")
_LIST_OF_STR = re.compile(r"^(typing\.|collections\.abc\.)?(list|List|Sequence)\[str\]$")


def text_completions(fn: Callable) -> Callable:
    """Declares that `fn` takes clipo's text convention (prompt texts, response strings)."""
    fn.completions_format = TEXT
    return fn


def _annotated_list_of_str(annotation: Any) -> bool:
    if isinstance(annotation, str):  # `from __future__ import annotations` leaves strings
        return bool(_LIST_OF_STR.match(annotation.replace(" ", "").strip("'\"")))
    origin = typing.get_origin(annotation)
    return origin in (list, collections.abc.Sequence) and typing.get_args(annotation) == (str,)


def completions_format(fn: Callable) -> str:
    """`text` when `fn` declares clipo's text convention (see the module), else `trl`."""
    declared = getattr(fn, "completions_format", None)
    if declared is not None:
        if declared not in (TEXT, TRL):
            raise ValueError(f"reward function {fn!r}: completions_format={declared!r} must be {TEXT!r} or {TRL!r}")
        return declared
    try:
        parameter = inspect.signature(fn).parameters.get("completions")
    except (TypeError, ValueError):  # a builtin without a signature
        return TRL
    return TEXT if parameter is not None and _annotated_list_of_str(parameter.annotation) else TRL


def is_conversational(record: dict) -> bool:
    """TRL's test on one record: plain text when its `prompt` is a string, else its messages."""
    return not isinstance(record.get("prompt"), str)


def trl_prompts(rows: Sequence[dict]) -> list[Any]:
    """TRL's `prompts`, one per rollout (`rows`: each rollout's record): its record's messages, or its prompt
    string when the batch's first record is plain text."""
    conversational = is_conversational(rows[0])
    return [record["messages"] if conversational else record.get("prompt", "") for record in rows]


def trl_completions(completions: list[str], conversational: bool) -> list[Any]:
    """TRL's `completions`: one assistant message per response in a conversational batch, else the strings."""
    return [[{"role": "assistant", "content": text}] for text in completions] if conversational else list(completions)
