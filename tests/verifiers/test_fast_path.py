"""The trainer-process fast path decides exactly as math-verify in a worker would, and decides often."""

from __future__ import annotations

import random
import subprocess
import sys

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


def test_two_stage_parsing_gives_latex2sympys_own_results():
    # in a fresh process (the patch is global): LL results first, then the patched parser's
    path = bench_dir() / "test" / "math.parquet"
    if not path.exists():
        pytest.skip(f"{path} not found (set CLIPO_BENCH_DIR)")
    script = f"""
import pandas as pd
from sympy import srepr
import latex2sympy2_extended.latex2sympy2 as l2s
from clipo.verifiers.math_verifier import gold_answer
from clipo.verifiers.math_worker import two_stage_parsing
golds = [gold_answer(str(rm["ground_truth"])) for rm in pd.read_parquet({str(path)!r})["reward_model"]][:200]
golds += ["x^2 + 3x - 4 = 0", "\\\\sum_{{k=0}}^{{n-1}} F_k F_{{n-k-1}}", "(-\\\\infty, 2] \\\\cup (3, \\\\infty)", "\\\\frac{{1}}{{"]
def parse_all():
    out = []
    for gold in golds:
        try:
            out.append(srepr(l2s.latex2sympy(gold, is_real=True, normalization_config=None)))
        except Exception as exc:
            out.append(type(exc).__name__)
    return out
reference = parse_all()
two_stage_parsing()
assert parse_all() == reference
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_plainly_unequal_only_where_math_verify_says_unequal():
    # in a fresh process (math-verify patched as in a worker): math-verify's own verify is the reference
    path = bench_dir() / "test" / "math.parquet"
    if not path.exists():
        pytest.skip(f"{path} not found (set CLIPO_BENCH_DIR)")
    script = f"""
import random
import pandas as pd
from clipo.verifiers import math_worker as mw
from clipo.verifiers.math_verifier import gold_answer
mv = mw._math_verify()
golds = [gold_answer(str(rm["ground_truth"])) for rm in pd.read_parquet({str(path)!r})["reward_model"]]
rng = random.Random(1)
pairs = [(rng.choice(golds), rng.choice(golds)) for _ in range(150)]
fixed = [("\\\\frac{{\\\\sqrt{{3}}}}{{2}}", "0.8660254"), ("\\\\pi", "3.14159265"), ("2", "\\\\sqrt{{4}}"), ("\\\\sqrt{{2}}", "27648"),
         ("42\\\\%", "0.42"), ("0.5", "\\\\frac{{1}}{{2}}")]
# a constant against a polynomial (unequal when the expansion keeps a symbol) or a set (unequal unless a singleton)
mixed_kinds = [("x^5 - x^4 + x^3 - x^2 + x - 1", "59", True), ("59", "2x + 1", True), ("\\\\frac{{13}}{{15}}", "p - q", True),
               ("2", "(x+1)^2 - x^2 - 2x + 1", False), ("x^2 - 1", "\\\\sqrt{{x}}", False),
               ("\\\\text{{e}}", "e", False),
               ("(-\\\\infty, 2) \\\\cup (3, \\\\infty)", "17", True), ("12", "(2,12) \\\\cup (12,102)", True),
               ("[-2,7]", "6", True), ("\\\\{{5\\\\}}", "5", False)]
pairs += fixed + [("\\\\frac{{7}}{{25}}", "28"), ("\\\\frac{{7}}{{25}}", "28\\\\%"), ("0.28", "28\\\\%")]
decided = 0
for gold, answer in pairs:
    gold_parsed = mw.parse_gold(gold)
    pred = mv.parse(f"\\\\boxed{{{{{{answer}}}}}}", mw._configs(True), parsing_timeout=None)
    if pred and mw.plainly_unequal(gold_parsed, pred, gold):
        decided += 1
        assert not mv.verify(list(gold_parsed), pred, timeout_seconds=None, allow_set_relation_comp=True), (gold, answer)
assert decided >= 30, decided
for gold, answer in fixed:
    pred = mv.parse(f"\\\\boxed{{{{{{answer}}}}}}", mw._configs(True), parsing_timeout=None)
    assert mw.plainly_unequal(mw.parse_gold(gold), pred, gold) == (answer == "27648"), (gold, answer)
for gold, answer, unequal in mixed_kinds:
    gold_parsed = mw.parse_gold(gold)
    pred = mv.parse(f"\\\\boxed{{{{{{answer}}}}}}", mw._configs(True), parsing_timeout=None)
    assert mw.plainly_unequal(gold_parsed, pred, gold) == unequal, (gold, answer)
    equal = mv.verify(list(gold_parsed), pred, timeout_seconds=None, allow_set_relation_comp=True)
    assert equal == (answer in ("(x+1)^2 - x^2 - 2x + 1", "e", "5")), (gold, answer)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
