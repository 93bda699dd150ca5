"""TRL's reward-function convention: what `prompts` and `completions` are, per record kind and per
function, checked against TRL's own reward functions and its `is_conversational`."""

# no `from __future__ import annotations`: the annotations below are real types, and one a string
import typing
from collections.abc import Sequence

import pytest
from trl.data_utils import is_conversational as trl_is_conversational
from trl.rewards import accuracy_reward, think_format_reward

from clipo.rl.reward_inputs import TEXT, TRL, completions_format, is_conversational, text_completions, trl_prompts
from clipo.rl.rewards import RewardFunction, build_reward_functions, record_columns, score_rollouts, verifier_reward
from clipo.rollout.batch import per_rollout

CHAT = [
    {"messages": [{"role": "user", "content": "1+1"}], "ground_truth": "2", "solution": "$2$", "level": 1},
    {"messages": [{"role": "user", "content": "2+3"}], "ground_truth": "5", "solution": "$5$", "level": 2},
]
PLAIN = [{**r, "prompt": r["messages"][-1]["content"]} for r in CHAT]  # a plain-text prompt column
COMPLETIONS = ["<think>sum</think> \\boxed{2}", "3", "\\boxed{5}", "<think>x</think>"]
TEXTS = ["t0", "t0", "t1", "t1"]  # prompt texts, chat template applied


def received(records, *functions):
    """What each function got as `prompts` / `completions`, scored like `RewardScorer` does."""
    seen = {}

    def spy(name):
        def fn(prompts, completions, **kwargs):
            seen[name] = {"prompts": prompts, "completions": completions, **kwargs}
            return [0.0] * len(completions)
        return fn

    entries = [RewardFunction("verifier", verifier_reward(lambda r, g: [0.0] * len(r)), 1.0, text=True)]
    entries += [RewardFunction(name, spy(name), 1.0, text) for name, text in functions]
    score_rollouts(entries, TEXTS, COMPLETIONS, [[1]] * 4, record_columns(per_rollout(records, 2)), None, trl_prompts(per_rollout(records, 2)))
    return seen


def test_conversational_records_get_message_lists_plain_ones_strings():
    seen = received(CHAT, ("trl", False), ("text", True))
    assert seen["trl"]["prompts"] == [CHAT[0]["messages"]] * 2 + [CHAT[1]["messages"]] * 2
    assert seen["trl"]["completions"][1] == [{"role": "assistant", "content": "3"}]
    assert seen["text"]["prompts"] == TEXTS and seen["text"]["completions"] == COMPLETIONS
    seen = received(PLAIN, ("trl", False))
    assert seen["trl"]["prompts"] == ["1+1", "1+1", "2+3", "2+3"] and seen["trl"]["completions"] == COMPLETIONS
    # every column under its own name, one value per rollout; `prompt` is TRL's `prompts`, not a column
    assert seen["trl"]["solution"] == ["$2$", "$2$", "$5$", "$5$"] and seen["trl"]["level"] == [1, 1, 2, 2]
    assert seen["trl"]["ground_truth"] == ["2", "2", "5", "5"] and "prompt" not in seen["trl"]


@pytest.mark.parametrize("records", [CHAT, PLAIN])
def test_conversational_as_trl_decides_it(records):
    trl_view = {"prompt": records[0].get("prompt", records[0]["messages"])}  # the dataset row TRL would see
    assert is_conversational(records[0]) == trl_is_conversational(trl_view)


def test_trl_reward_functions_run_unchanged_and_match_a_direct_call():
    functions = build_reward_functions(["verifier", "trl.rewards:accuracy_reward", "trl.rewards:think_format_reward"],
                                       None, lambda r, g: [0.0] * len(r))
    columns = record_columns(per_rollout(CHAT, 2))
    out = score_rollouts(functions, TEXTS, COMPLETIONS, [[1]] * 4, columns, None, trl_prompts(per_rollout(CHAT, 2)))
    messages = [[{"role": "assistant", "content": c}] for c in COMPLETIONS]
    assert out.scores[:, 1].tolist() == accuracy_reward(messages, columns["solution"]) == [1.0, 0.0, 1.0, 0.0]
    assert out.scores[:, 2].tolist() == think_format_reward(messages) == [1.0, 0.0, 0.0, 1.0]
    assert out.extra["gold_parsed"][0] == "[2, '2']"  # TRL's log_extra reached the rollout columns


def annotated_text(prompts: list[str], completions: list[str], **kwargs): ...
def annotated_seq(prompts, completions: Sequence[str], **kwargs): ...
def annotated_typing(prompts, completions: typing.List[str], **kwargs): ...  # noqa: UP006
def annotated_as_string(prompts, completions: "list[str]", **kwargs): ...  # what __future__ annotations leave
def annotated_messages(prompts, completions: list[list[dict[str, str]]], **kwargs): ...
def unannotated(prompts, completions, **kwargs): ...


@text_completions
def declared(prompts, completions, **kwargs): ...


@pytest.mark.parametrize("fn, expected", [
    (annotated_text, TEXT), (annotated_seq, TEXT), (annotated_typing, TEXT), (annotated_as_string, TEXT),
    (declared, TEXT), (annotated_messages, TRL), (unannotated, TRL), (think_format_reward, TRL),
    (accuracy_reward, TRL), (print, TRL),
])  # fmt: skip
def test_which_convention_a_function_takes(fn, expected):
    assert completions_format(fn) == expected


def test_a_bad_declaration_says_what_is_allowed():
    def fn(prompts, completions, **kwargs): ...

    fn.completions_format = "strings"
    with pytest.raises(ValueError, match="must be 'text' or 'trl'"):
        completions_format(fn)
