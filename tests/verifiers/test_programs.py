"""No reward for programs: an "answer" that is code scores 0 even when its value is the ground truth.

Each case is Python whose value (checked here with `eval` on our own literals, the
independent reference) equals its ground truth, so only the rule "code is not an
answer" makes it score 0. Mathematical answers next to them stay accepted.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from clipo.verifiers import GSM8KVerifier
from clipo.verifiers.code_answers import code_reason

# (code, ground truth, the shape code_reason names)
PROGRAMS = [
    ("(lambda: 42)()", "42", "lambda"),
    ("(lambda x: x + 1)(41)", "42", "lambda"),
    ("__import__('operator').add(40, 2)", "42", "dunder name"),
    ("(42).__abs__()", "42", "dunder name"),
    ("42 if True else 0", "42", "conditional expression"),
    ("[x for x in (42,)][0]", "42", "comprehension"),
    ("sum(k for k in range(10))", "45", "comprehension"),
    ("(42).real", "42", "attribute access"),
    ("42 .real", "42", "attribute access"),
    ("42j.imag", "42", "attribute access"),
    ("(84).bit_length()", "7", "attribute access"),
    ("int('42')", "42", "string literal"),
    ("eval('6*7')", "42", "string literal"),
    ("'42'", "42", "string literal"),
    ("len('abcd')", "4", "string literal"),
    ("[41, 42][1]", "42", "indexing"),
    ("(42,)[0]", "42", "indexing"),
    ("int(42.9)", "42", "code call"),
    ("float(42)", "42", "code call"),
    ("round(41.7)", "42", "code call"),
    ("pow(2, 5)", "32", "code call"),
    ("divmod(85, 2)[0]", "42", "indexing"),
    ("abs(-6) * ord('*') // 6", "42", "string literal"),
    ("bool(1)", "1", "code call"),
]
# Code no Python runs as written, so no eval reference: still code, still 0.
NOT_PYTHON_VALUES = [
    ("import math; 42", "42", "import"),
    ("from math import pi; 42", "42", "import"),
    ("x.subs(x, 42)", "42", "attribute access"),
    ("exec('x = 42')", "42", "string literal"),
    ("Rational(1, 2)", "\\frac{1}{2}", "code call"),
    ("Integer(42)", "42", "code call"),
    ("def f(): return 42", "42", "empty call"),
]
STYLES = ["\\boxed{{{}}}", "The final answer is ${}$.", "The answer is {}", "So we get {}"]
# Mathematics that looks a little like code and must stay accepted: (response answer, ground truth)
MATHEMATICS = [
    ("\\lambda^2 + 1", "\\lambda^2 + 1"),
    ("f'(x)", "f'(x)"),
    ("f(2) < f(1) < f(4)", "f(2) < f(1) < f(4)"),
    ("sqrt(2)", "\\sqrt{2}"),
    ("6*7", "42"),
    ("\\max(3, 5)", "\\max(3, 5)"),
    ("xy(x+y)", "xy(x+y)"),
    ("3(x+1)", "3x+3"),
    ("\\frac{\\pi}{2}", "\\frac{\\pi}{2}"),
    ("(11,7)or(7,11)", "(11,7)or(7,11)"),
    ("\\text{Mr. Smith}", "\\text{Mr. Smith}"),
    ("0.5", "\\frac{1}{2}"),
    ("x \\in [0, 1)", "[0, 1)"),
]


@pytest.mark.parametrize(("code", "gold", "shape"), PROGRAMS)
def test_program_values_equal_their_ground_truth(code, gold, shape):
    # the reference: the program really computes the ground truth, so a 0 below is the rule, not a miss
    value = eval(code, {"__builtins__": __builtins__})  # noqa: S307 - our own literals
    assert value == int(gold) or value == gold
    assert code_reason(code) == shape


@pytest.mark.parametrize(("code", "gold", "shape"), PROGRAMS + NOT_PYTHON_VALUES)
def test_program_scores_zero(math_verifier, code, gold, shape):
    before = math_verifier.stats()
    assert math_verifier([style.format(code) for style in STYLES], [gold] * len(STYLES)) == [0.0] * len(STYLES)
    assert math_verifier.stats()["rejected"] - before["rejected"] >= 1  # the boxed one never reaches a worker
    assert code_reason(code) == shape


@pytest.mark.parametrize(("answer", "gold"), MATHEMATICS)
def test_mathematics_that_looks_like_code_is_accepted(math_verifier, answer, gold):
    assert code_reason(answer) is None
    assert math_verifier([f"\\boxed{{{answer}}}", f"The final answer is ${answer}$."], [gold, gold]) == [1.0, 1.0]


def test_plain_arithmetic_stated_without_a_box_is_accepted(math_verifier):
    assert code_reason("2**5") is None
    assert math_verifier(["The answer is 2**5", "The answer is 2**5 = 32."], ["32", "32"]) == [1.0, 1.0]


# Prose around a right answer: words that are also Python keywords, quotes, citations.
PROSE = [
    "There are 30 students in the class, so the answer is 30.",
    "We return to the start: the answer is 30.",
    'We call it "the total": the answer is 30.',
    "If n is even we get 30, else 31; here n is even, so the answer is 30.",
    "See (2) [3], so the answer is 30.",
    "That is, i.e. the answer is 30.",
    "For each x in the set we add 1, for 30 in all.",
]


def test_prose_around_a_right_answer_is_no_program(math_verifier, gsm8k_verifier):
    assert math_verifier(PROSE, ["30"] * len(PROSE)) == [1.0] * len(PROSE)
    assert gsm8k_verifier(PROSE, ["30"] * len(PROSE)) == [1.0] * len(PROSE)


def test_gsm8k_gives_no_reward_for_programs():
    with GSM8KVerifier() as verifier:
        responses = ["\\boxed{(lambda: 42)()}", "The answer is int('42').", "x = [41, 42][1]; the answer is 42",
                     "\\boxed{42}", "The answer is 42."]
        assert verifier(responses, ["42"] * 5) == [0.0, 0.0, 1.0, 1.0, 1.0]


def test_worker_never_evaluates_text():
    # sympy's string parser evals; in a verifier worker it reads number literals and names only
    script = ("from clipo.verifiers.math_worker import warm_up; warm_up()\n"
              "import sympy\n"
              "assert sympy.Number('2.50') == sympy.Float('2.5') and sympy.Number('7') == 7\n"
              "assert sympy.sympify('x') == sympy.Symbol('x') and sympy.sympify('pi') is sympy.pi\n"
              "for text in ['__import__(\"os\").getpid()', '1 + 1', '__builtins__', 'x.subs(x, 1)']:\n"
              "    try:\n"
              "        sympy.sympify(text)\n"
              "    except ValueError as exc:\n"
              "        assert 'never evaluates' in str(exc)\n"
              "    else:\n"
              "        raise SystemExit(f'sympify evaluated {text!r}')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
