"""Reward functions: parsing, TRL's keywords, the weighted sum by hand, and errors that name the function."""

from __future__ import annotations

import math
import textwrap

import pytest
import torch

from clipo.rl.rewards import (
    RewardFunction,
    RewardFunctionError,
    build_reward_functions,
    concat_scores,
    record_columns,
    reward_config_problems,
    reward_metrics,
    score_rollouts,
)
from clipo.rollout.batch import per_rollout

USER_MODULE = """
    CALLS = []

    def brevity(prompts, completions, completion_ids=None, ground_truth=None, **kwargs):
        CALLS.append({"prompts": prompts, "completions": completions, "completion_ids": completion_ids,
                      "ground_truth": ground_truth, **kwargs})
        return [-len(c) / 10 for c in completions]

    def only_even(prompts, completions, **kwargs):
        return [1.0 if i % 2 == 0 else None for i in range(len(completions))]

    def broken(prompts, completions, **kwargs):
        raise KeyError("no such column")

    def too_short(prompts, completions, **kwargs):
        return [1.0]

    def with_text(prompts, completions, **kwargs):
        return [0.5, "high", 1.0, 0.0]

    def as_dict(prompts, completions, **kwargs):
        return {c: 1.0 for c in completions}

    def huge(prompts, completions, **kwargs):
        return [0.0, 0.0, 1e39, 0.0]

    def exits(prompts, completions, **kwargs):
        raise SystemExit(3)

    def interrupts(prompts, completions, **kwargs):
        raise KeyboardInterrupt

    def logs(prompts, completions, log_metric=None, log_extra=None, **kwargs):
        log_metric("custom/calls", 2.0)
        log_extra("note", [c.upper() for c in completions])
        return [0.0] * len(completions)

    NOT_CALLABLE = 3
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    import my_rewards

    importlib.reload(my_rewards)  # fresh CALLS per test
    yield my_rewards


def exact_verifier(responses, ground_truths):
    return [float(r == g) for r, g in zip(responses, ground_truths)]


RECORDS = [
    {"messages": [{"role": "user", "content": "1+1"}], "ground_truth": "2", "data_source": "arith", "level": 1},
    {"messages": [{"role": "user", "content": "2+3"}], "ground_truth": "5", "data_source": "arith", "level": 2},
]
COMPLETIONS = ["2", "3 is it", "5", "no"]  # G = 2: rollouts 0, 1 for prompt 0; 2, 3 for prompt 1


def score(functions):
    columns = record_columns(per_rollout(RECORDS, 2))
    ids = [[ord(ch) for ch in c] for c in COMPLETIONS]
    return score_rollouts(functions, ["p0", "p0", "p1", "p1"], COMPLETIONS, ids, columns, trainer_state="state")


def test_trl_keywords_reach_the_function(user_module):
    functions = build_reward_functions(["verifier", "my_rewards:brevity"], None, exact_verifier)
    score(functions)
    (call,) = user_module.CALLS
    assert call["prompts"] == ["p0", "p0", "p1", "p1"] and call["completions"] == COMPLETIONS
    assert call["completion_ids"][1] == [ord(ch) for ch in "3 is it"]
    assert call["ground_truth"] == ["2", "2", "5", "5"]  # dataset columns, one value per rollout
    assert call["level"] == [1, 1, 2, 2] and call["data_source"] == ["arith"] * 4
    assert call["messages"][2] == RECORDS[1]["messages"]
    assert call["trainer_state"] == "state" and callable(call["log_metric"]) and callable(call["log_extra"])


def test_weighted_sum_by_hand(user_module):
    functions = build_reward_functions(["verifier", "my_rewards:brevity", "my_rewards:only_even"], [1.0, 0.5, 2.0],
                                       exact_verifier)
    out = score(functions)
    # verifier:  [1, 0, 1, 0]; brevity: -len/10 = [-0.1, -0.7, -0.1, -0.2]; only_even: [1, None, 1, None]
    # total = 1*v + 0.5*b + 2*e (None -> 0):
    #   0: 1 - 0.05 + 2 = 2.95;  1: 0 - 0.35 + 0 = -0.35;  2: 1 - 0.05 + 2 = 2.95;  3: 0 - 0.1 + 0 = -0.1
    torch.testing.assert_close(out.total, torch.tensor([2.95, -0.35, 2.95, -0.1]))
    assert out.names == ["verifier", "brevity", "only_even"]
    assert out.scores.shape == (4, 3) and math.isnan(out.scores[1, 2])
    assert out.correct.tolist() == [True, False, True, False]  # the verifier's, not the sum's
    metrics = reward_metrics(out)
    torch.testing.assert_close(metrics["reward/brevity/mean"], torch.tensor(-0.275))  # (-0.1-0.7-0.1-0.2)/4
    torch.testing.assert_close(metrics["reward/verifier/std"], torch.tensor(0.5))  # population std of 1,0,1,0
    torch.testing.assert_close(metrics["reward/only_even/mean"], torch.tensor(1.0))  # over the rollouts it applied to
    torch.testing.assert_close(metrics["reward/only_even/std"], torch.tensor(0.0))
    assert set(out.seconds) == {"verifier", "brevity", "only_even"}


def test_correctness_from_verifier_even_when_not_listed(user_module):
    functions = build_reward_functions(["my_rewards:brevity"], [2.0], exact_verifier)
    out = score(functions)
    assert [f.name for f in functions] == ["brevity", "verifier"] and functions[1].weight == 0.0
    torch.testing.assert_close(out.total, torch.tensor([-0.2, -1.4, -0.2, -0.4]))  # 2 * brevity only
    assert out.correct.tolist() == [True, False, True, False]


@pytest.mark.parametrize(
    "name, message",
    [
        ("broken", "'broken' raised KeyError"),
        ("too_short", "'too_short' returned 1 values for 4 completions"),
        ("with_text", r"'with_text' returned 'high' \(str\) for completion 1"),
        # before: a dict's keys became the rewards
        ("as_dict", r"'as_dict' returned a dict; it must return a list with one float \(or None\) per completion"),
        # before: finite as a Python float, inf as a float32 score; the update was skipped, exit 0
        ("huge", r"'huge' returned 1e\+39 \(float\) for completion 2 of 4, beyond float32's largest 3.403e\+38"),
        # before: exit 3 / exit 1 with no message and no summary
        ("exits", r"'exits' raised SystemExit: 3"),
        ("interrupts", r"'interrupts' raised KeyboardInterrupt \(signature"),
    ],
)
def test_bad_function_fails_the_step_naming_it(user_module, name, message):
    with pytest.raises(RewardFunctionError, match=message):
        score(build_reward_functions(["verifier", f"my_rewards:{name}"], None, exact_verifier))


def test_nan_is_rejected_none_is_not():
    def nan_fn(prompts, completions, **kwargs):
        return [0.0, float("nan"), 0.0, 0.0]

    from clipo.rl.rewards import RewardFunction, verifier_reward

    functions = [RewardFunction("verifier", verifier_reward(exact_verifier), 1.0), RewardFunction("nan_fn", nan_fn, 1.0)]
    with pytest.raises(RewardFunctionError, match=r"'nan_fn' returned nan \(float\) for completion 1"):
        score(functions)


@pytest.mark.parametrize("timeout_s", [None, 5.0])  # on this thread, and in a worker thread
def test_a_second_stop_signal_is_not_taken_for_the_functions_own_interrupt(timeout_s):
    from clipo.rl.rewards import verifier_reward
    from clipo.run.stop_signals import ForcedStop

    def stopped(prompts, completions, **kwargs):
        raise ForcedStop  # what StopSignals raises on the main thread at a second signal

    functions = [RewardFunction("verifier", verifier_reward(exact_verifier), 1.0),
                 RewardFunction("stopped", stopped, 1.0, timeout_s=timeout_s)]
    with pytest.raises(ForcedStop):
        score(functions)


def test_a_weighted_sum_beyond_float32_names_the_completion_and_its_terms():
    from clipo.rl.rewards import verifier_reward

    def big(prompts, completions, **kwargs):
        return [3e38, 0.0, 0.0, 0.0]  # finite in float32, but twice it is not

    functions = [RewardFunction("verifier", verifier_reward(exact_verifier), 1.0), RewardFunction("big", big, 2.0)]
    with pytest.raises(RewardFunctionError, match=r"weighted reward of completion 0 of 4 overflows float32 "
                                                  r"\(verifier: 1 x 1, big: 3e\+38 x 2\)"):
        score(functions)


def test_log_metric_and_log_extra(user_module):
    out = score(build_reward_functions(["verifier", "my_rewards:logs"], None, exact_verifier))
    assert reward_metrics(out)["custom/calls"] == 2.0
    assert out.extra["note"] == [c.upper() for c in COMPLETIONS]
    both = concat_scores([out, out.select(torch.tensor([3]))])
    assert both.extra["note"][-1] == "NO" and both.scores.shape == (5, 2) and both.correct.tolist()[-1] is False


def test_config_problems(user_module):
    assert reward_config_problems(["verifier", "my_rewards:brevity"], [1, 0.5]) == []
    assert reward_config_problems(["verifier"], None) == []
    problems = reward_config_problems(["verifier", "nonexistent_mod:fn", "my_rewards:missing", "my_rewards:NOT_CALLABLE",
                                       "bare_name"], [1.0])
    text = "\n".join(problems)
    assert "module 'nonexistent_mod' does not import" in text and "PYTHONPATH" in text
    assert "has no attribute 'missing'" in text
    assert "'my_rewards:NOT_CALLABLE' is a int" in text
    assert "'bare_name' must be `verifier`, `module:function`" in text
    assert "needs one number per reward_funcs entry (5" in text
    assert "more than once" in reward_config_problems(["verifier", "verifier"], None)[0]
    assert "non-empty list" in reward_config_problems([], None)[0]
    (problem,) = reward_config_problems(["verifier", "no-such-org/no-such-reward-model"], None)  # offline, not cached
    assert "reward model 'no-such-org/no-such-reward-model' does not load" in problem


def test_a_function_past_its_time_limit_fails_naming_it():
    import threading

    release = threading.Event()

    def stuck(prompts, completions, **kwargs):
        release.wait(30)  # released below, so the thread ends with the test
        return [0.0] * len(completions)

    functions = build_reward_functions(["verifier"], None, exact_verifier)
    functions.append(RewardFunction("stuck", stuck, 1.0, timeout_s=0.2))
    try:
        with pytest.raises(RewardFunctionError, match=r"'stuck' raised TimeoutError: did not return within "
                                                      r"reward_timeout_s=0.2 s \(it keeps running"):
            score(functions)
    finally:
        release.set()
    fast = RewardFunction("fast", lambda prompts, completions, **kw: [1.0] * len(completions), 1.0, timeout_s=5)
    assert score([*functions[:1], fast]).scores[:, 1].tolist() == [1.0] * 4  # a result within the limit
    raising = RewardFunction("raising", lambda **kw: 1 / 0, 1.0, timeout_s=5)
    with pytest.raises(RewardFunctionError, match="'raising' raised ZeroDivisionError"):  # its error, from the thread
        score([*functions[:1], raising])


def test_timeout_is_configured_and_checked(user_module):
    functions = build_reward_functions(["verifier", "my_rewards:brevity"], None, exact_verifier, timeout_s=7)
    assert [f.timeout_s for f in functions] == [None, 7]  # the verifier has its own limits
    assert reward_config_problems(["verifier"], None, 60) == reward_config_problems(["verifier"], None, None) == []
    for bad in (0, -1, "60", float("inf"), True):
        assert "reward_timeout_s" in reward_config_problems(["verifier"], None, bad)[0]
