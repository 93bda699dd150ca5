"""`verifier=math`: the final answer of a response against a LaTeX ground truth.

The answer is the last `\\boxed{}`/`\\fbox{}`; without one, `fallback` decides:
`"last_number"` (default; fits small models that rarely box) lets math-verify take an
explicit final statement ("the final answer is 7", "Answer: $x=3$") and otherwise the
last number or LaTeX expression; `"answer_phrase"` accepts only explicit statements;
`"none"` scores unboxed responses 0.

Order of work per response, cheapest first, in the trainer's process: keep the last
`tail_chars` characters (NUL bytes dropped); reject absurd answers (exponent towers, powers of more than 10,000 digits,
factorials of thousands, deep brace nesting) and programs (`code_answers.py`) with 0;
compare normalised strings; compare plain numbers exactly (a boxed answer, or the `$X$`
of a response that ends "the answer is $X$." with no other math). Only what is left goes
to a worker, which runs math-verify under the hard time limit. A ground truth that
contains `\\boxed{}` (a whole reference solution, as in MATH train) is reduced to its last
boxed answer.
"""

from __future__ import annotations

import math
import re
from functools import lru_cache

from clipo.registry import VERIFIERS
from clipo.verifiers.base import Verifier
from clipo.verifiers.code_answers import code_reason
from clipo.verifiers.numbers import numbers_equal, parse_number
from clipo.verifiers.text import (
    DEFAULT_TAIL_CHARS,
    MAX_BRACE_DEPTH,
    brace_depth,
    braces_balanced,
    clean_response,
    find_boxed,
    last_boxed,
    normalize_answer,
)

FALLBACKS = ("none", "answer_phrase", "last_number")
MAX_GOLD_CHARS = 2000
# Answers no benchmark has and that make sympy compute for ever: towers of three or more
# powers, two-level towers topped by a 3+ digit exponent, factorials of 4+ digit numbers,
# exponents of 5+ digits, 300+ digit literals.
_POW = r"\d+\s*\^\s*\{?\s*\(?\s*"
_ABSURD_RE = re.compile(rf"(?:{_POW}){{3}}|{_POW}{_POW}\d{{3}}|\d{{4,}}\s*!|\^\s*\{{?\s*\d{{5,}}|\d{{300}}")


_VARIABLE_PREFIX_RE = re.compile(r"[A-Za-z]\s*=\s*(?=\S)")
# The stated-answer fast path reads only plain numbers, the forms math-verify keeps as written.
_STRICT_NUMBER_RE = re.compile(r"-?\d{1,50}(?:\.\d{1,50})?|-?\\[dt]?frac\{\d{1,50}\}\{\d{1,50}\}|-?\d{1,50}/\d{1,50}")
_STATED_RE = re.compile(r"(?i:answer)[^$\n]{0,50}?(?<![\d\\])\$([^$\n]{1,200})\$[\s.]*$")
_ANSWER_WORD_RE = re.compile(r"(?i:answer)")
_OTHER_MATH_MARKS = ("\\$", "\\boxed", "\\fbox", "\\(", "\\[")


# Chains of powers of plain numbers, `a^{b^{c}}` (braces and parentheses optional), whose value
# `power_digits` estimates in floats: sympy would build the exact integer.
_NUMBER = r"\d{1,50}(?:\.\d{1,50})?\s*\)?"
_POWER_CHAIN_RE = re.compile(rf"{_NUMBER}(?:\s*\^\s*\{{?\s*\(?\s*{_NUMBER})+")
_CHAIN_NUMBER_RE = re.compile(r"\d+(?:\.\d+)?")
# No benchmark answer has more digits than this; 10^{10^{10}} has 10^10 of them.
MAX_ANSWER_DIGITS = 10_000


def power_digits(numbers: list[float]) -> float:
    """log10 of the right-associative tower `numbers[0] ^ numbers[1] ^ ...` (its digit count, about),
    in floats: inf when it overflows, never the exact value."""
    log_value = math.log10(numbers[-1]) if numbers[-1] > 0 else -math.inf
    for base in reversed(numbers[:-1]):
        if base <= 1:  # 0 or 1 (or a fraction) to any power stays small
            log_value = 0.0
            continue
        exponent = 10.0 ** log_value if log_value < 300 else math.inf
        log_value = exponent * math.log10(base)
    return log_value


def too_many_digits(answer: str) -> bool:
    """True when a power tower of plain numbers in `answer` has more than `MAX_ANSWER_DIGITS` digits."""
    for chain in _POWER_CHAIN_RE.finditer(answer):
        numbers = [float(x) for x in _CHAIN_NUMBER_RE.findall(chain.group())]
        if power_digits(numbers) > MAX_ANSWER_DIGITS:
            return True
    return False


def is_absurd(answer: str) -> bool:
    """True for answers that are never real and would only burn a worker's time limit."""
    return brace_depth(answer) > MAX_BRACE_DEPTH or _ABSURD_RE.search(answer) is not None or too_many_digits(answer)


@lru_cache(maxsize=65536)
def gold_answer(ground_truth: str) -> str:
    """The answer part of a ground truth: its last boxed answer if it has one, else itself."""
    boxed = last_boxed(ground_truth) if "\\boxed" in ground_truth or "\\fbox" in ground_truth else None
    return (boxed if boxed is not None else ground_truth).strip().strip("$").strip()


def plain_comparison(answer: str, gold: str, numbers: bool = True) -> float | None:
    """The score when no symbolic work is needed (equal normalised strings; with `numbers`,
    two plain numbers, also `x = 3` against a numeric gold), else None: a worker decides.
    """
    if normalize_answer(answer) == normalize_answer(gold):
        return 1.0
    gold_number = parse_number(gold) if numbers else None
    if gold_number is None:
        return None
    if "=" not in gold and (prefix := _VARIABLE_PREFIX_RE.match(answer)) is not None:
        answer = answer[prefix.end():]  # `x = 7` is the answer 7 (as math-verify reads it)
    pred_number = parse_number(answer)
    if pred_number is None:
        return None
    if numbers_equal(gold_number, pred_number) or not (gold_number.ambiguous or pred_number.ambiguous):
        return float(numbers_equal(gold_number, pred_number))
    return None


def stated_math_answer(text: str) -> str | None:
    """X in a response that ends "... the answer is $X$." and has no other math or answer phrase.

    Only then does math-verify's extraction surely take X (its answer-phrase patterns,
    rightmost math region first); anything less plain is left to math-verify itself.
    """
    if text.count("$") != 2 or any(mark in text for mark in _OTHER_MATH_MARKS):
        return None
    if len(_ANSWER_WORD_RE.findall(text)) != 1:
        return None
    match = _STATED_RE.search(text)
    return match.group(1) if match else None


@VERIFIERS.register("math")
class MathVerifier(Verifier):
    """Symbolic equivalence of final answers through math-verify, with cheap paths first.

    Args:
        timeout: hard limit in seconds for one symbolic check.
        num_workers: worker processes (default min(2, cpu count)).
        fallback: what counts as the answer when nothing is boxed: "last_number",
            "answer_phrase" or "none" (see the module docstring).
        tail_chars: only the last `tail_chars` characters of a response are read.
    """

    fallbacks = FALLBACKS

    task_fn = "clipo.verifiers.math_worker:math_task"

    def __init__(self, timeout: float = 5.0, num_workers: int | None = None, fallback: str = "last_number",
                 tail_chars: int = DEFAULT_TAIL_CHARS) -> None:
        super().__init__(timeout=timeout, num_workers=num_workers, fallback=fallback, tail_chars=tail_chars)

    def _precheck(self, response: str, ground_truth: str) -> float | tuple:
        gold = gold_answer(ground_truth)
        if not normalize_answer(gold):  # `\\boxed{}` or `$$`: nothing to be right against
            self._counts["rejected"] += 1
            return 0.0
        text = clean_response(response, self.tail_chars)
        spans = find_boxed(text)
        if not spans and self.fallback == "none":
            return 0.0
        answer = text[spans[-1][0] : spans[-1][1]] if spans else text
        if is_absurd(answer) or (spans and code_reason(answer) is not None):
            self._counts["rejected"] += 1
            return 0.0
        if spans:
            decided = plain_comparison(answer, gold, numbers=len(spans) == 1)
            if self.fallback == "none":
                text = f"\\boxed{{{answer}}}"
        else:
            stated = stated_math_answer(text)
            if stated is not None and code_reason(stated) is not None:
                self._counts["rejected"] += 1
                return 0.0
            strict = stated is not None and _STRICT_NUMBER_RE.fullmatch(stated) is not None
            decided = None if stated is None else plain_comparison(stated, gold, numbers=strict)
        if decided is not None:
            self._counts["fast_path"] += 1
            return decided
        return ("check", text, gold, self.fallback == "last_number")

    def validate_ground_truth(self, ground_truth: str) -> None:
        problem = self._gold_problems([str(ground_truth)])[0]
        if problem is not None:
            raise ValueError(problem)

    def _gold_problems(self, ground_truths: list[str]) -> list[str | None]:
        problems: list[str | None] = [None] * len(ground_truths)
        tasks, slots = [], []
        for i, truth in enumerate(ground_truths):
            gold = gold_answer(truth)
            if not normalize_answer(gold) or "\x00" in gold or len(gold) > MAX_GOLD_CHARS or not braces_balanced(gold):
                problems[i] = (f"ground truth {truth[:200]!r} is empty, too long, has unbalanced braces or "
                               "NUL bytes; a math ground truth is a LaTeX answer such as '\\frac{1}{2}'")
            elif parse_number(gold) is None:
                tasks.append(("gold", gold))
                slots.append(i)
        for i, (status, value) in zip(slots, self._run(tasks), strict=True):
            if status != "ok":
                problems[i] = f"parsing ground truth {ground_truths[i][:200]!r} failed ({status})"
            elif value is not None:
                problems[i] = f"{value}; write it as a LaTeX answer such as '\\frac{{1}}{{2}}'"
        return problems
