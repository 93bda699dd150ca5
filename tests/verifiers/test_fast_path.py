"""The trainer-process fast path decides exactly as math-verify in a worker would, and decides often."""

from __future__ import annotations

import random

import pytest

from clipo.verifiers.math_verifier import gold_answer, plain_comparison, stated_math_answer
from clipo.verifiers.numbers import parse_number
from tests.verifiers.conftest import bench_dir


def _answers(gold: str, others: list[str], rng: random.Random) -> list[str]:
    """Right answers written differently and wrong ones, as a policy writes them."""
    answers = [gold, f"x = {gold}", gold.replace("\\frac", "\\dfrac"), rng.choice(others)]
    number = parse_number(gold)
    if number is not None and number.value.denominator == 1:
        answers += [str(number.value + 1), f"y = {number.value - 1}", f"{number.value}.0"]
    elif number is not None:
        answers += [f"{number.value.numerator}/{number.value.denominator}", f"{float(number.value):.6f}"]
    return answers


@pytest.mark.parametrize("style", ["So the answer is ${}$.", "\\boxed{{{}}}", "The final answer is $\\boxed{{{}}}$"])
def test_fast_path_agrees_with_math_verify(math_verifier, style):
    path = bench_dir() / "test" / "math.parquet"
    if not path.exists():
        pytest.skip(f"{path} not found (set CLIPO_BENCH_DIR)")
    pd = pytest.importorskip("pandas")
    golds = [gold_answer(str(rm["ground_truth"])) for rm in pd.read_parquet(path)["reward_model"]][:120]
    rng = random.Random(0)
    responses, truths = [], []
    for gold in golds:
        for answer in _answers(gold, golds, rng):
            responses.append(style.format(answer))
            truths.append(gold)
    fast = [math_verifier._precheck(r, t) for r, t in zip(responses, truths)]
    # the reference: math-verify in a worker, on every response, decided or not
    reference = [1.0 if status == "ok" and value else 0.0 for status, value in
                 math_verifier._run([("check", r, t, True) for r, t in zip(responses, truths)])]
    decided = [(r, t, f, ref) for r, t, f, ref in zip(responses, truths, fast, reference) if not isinstance(f, tuple)]
    assert [d for d in decided if d[2] != d[3]] == []
    assert len(decided) >= 0.5 * len(responses)  # most plain answers never reach a worker


def test_stated_answer_only_when_math_verify_would_surely_take_it():
    assert stated_math_answer("Adding up, the answer is $42$.") == "42"
    assert stated_math_answer("Answer: $\\frac{1}{2}$") == "\\frac{1}{2}"
    for text in ["The answer is $42$. Check: $6 \\cdot 7 = 42$",     # more math after it
                 "So $x = 3$ and the answer is $42$.",               # other math before it
                 "The answer is $42$, not the answer $41$.",
                 "The final answer is 7. The answer is $42$.",       # two answer phrases
                 "The answer is $42$ and more words after",
                 "The answer is \\$42$ dollars$.", "The answer is 5$42$."]:
        assert stated_math_answer(text) is None, text


def test_boxed_variable_prefix_against_numeric_gold():
    assert plain_comparison("x = 7", "7") == 1.0
    assert plain_comparison("y=8", "7") == 0.0
    assert plain_comparison("x = 7", "x = 7") == 1.0
    assert plain_comparison("x = 7", "y = 7") is None  # an equation gold: math-verify decides
