"""`verifier=gsm8k`: a number (GSM8K, GSM-Symbolic), tolerant of commas, units, `$` and periods.

The answer is the number in the last `\\boxed{}`; without one, `fallback` decides:
`"last_number"` (default) takes an explicit statement ("The answer is 1,200 dollars.",
"#### 72"), else the last number in the response; `"answer_phrase"` takes only
statements; `"none"` scores unboxed responses 0. An answer that is a program
(`code_answers.py`) scores 0. Values are compared exactly as
fractions (decimals to 6 places), never evaluated: pure string work, no worker needed.
A ground truth that is a word (e.g. `NaN`) is compared as a case-insensitive string.
"""

from __future__ import annotations

import re

from clipo.registry import VERIFIERS
from clipo.verifiers.base import Verifier
from clipo.verifiers.code_answers import code_reason
from clipo.verifiers.numbers import PlainNumber, last_number, numbers_equal, parse_number
from clipo.verifiers.text import DEFAULT_TAIL_CHARS, answer_statement, clean_response, last_boxed, normalize_answer

FALLBACKS = ("none", "answer_phrase", "last_number")
_WORD_RE = re.compile(r"[A-Za-z][A-Za-z ]{0,40}")


@VERIFIERS.register("gsm8k")
class GSM8KVerifier(Verifier):
    """Exact numeric match of the final number against a numeric ground truth.

    Args:
        fallback: "last_number", "answer_phrase" or "none" (see the module docstring).
        tail_chars: only the last `tail_chars` characters of a response are read.
    """

    fallbacks = FALLBACKS

    def __init__(self, fallback: str = "last_number",
                 tail_chars: int = DEFAULT_TAIL_CHARS) -> None:
        super().__init__(fallback=fallback, tail_chars=tail_chars)  # no check needs a worker or a time limit

    def extract(self, response: str) -> str | None:
        """The answer text `response` gives (a boxed answer, a statement or a number), or None."""
        text = clean_response(response, self.tail_chars)
        boxed = last_boxed(text)
        if boxed is not None or self.fallback == "none":
            return None if boxed is not None and code_reason(boxed) is not None else boxed
        statement = answer_statement(text)
        if statement is not None and code_reason(statement, in_prose=True) is not None:
            return None  # a program is no answer (code_answers.py)
        if statement is not None and (statement_number := last_number(statement)) is not None:
            return _as_text(statement_number)
        if statement is not None and _WORD_RE.fullmatch(statement):
            return statement
        if self.fallback == "answer_phrase":
            return None
        number = last_number(text)
        last_line = text.rstrip().rpartition("\n")[2]
        return _as_text(number) if number is not None and code_reason(last_line, in_prose=True) is None else None

    def _precheck(self, response: str, ground_truth: str) -> float:
        self.validate_ground_truth(ground_truth)
        self._counts["fast_path"] += 1
        answer = self.extract(response)
        if answer is None:
            return 0.0
        gold = parse_number(ground_truth)
        if gold is None:  # a word ground truth
            return float(normalize_answer(answer).lower() == normalize_answer(ground_truth).lower())
        pred = parse_number(answer) or last_number(answer)
        return float(pred is not None and numbers_equal(gold, pred))

    def validate_ground_truth(self, ground_truth: str) -> None:
        text = str(ground_truth).strip()
        if parse_number(text) is None and _WORD_RE.fullmatch(text) is None:
            raise ValueError(f"gsm8k ground truth {text[:100]!r} is neither a number nor a word; "
                             "use verifier=math for LaTeX answers")


def _as_text(number: PlainNumber) -> str:
    sign = "-" if number.value < 0 else ""
    value = abs(number.value)
    body = str(value.numerator) if value.denominator == 1 else f"\\frac{{{value.numerator}}}{{{value.denominator}}}"
    if number.decimal:
        body = str(float(value)) if value.denominator != 1 else f"{value.numerator}.0"
    return sign + body + ("\\%" if number.percent else "")
