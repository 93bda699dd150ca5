"""The symbolic part of the `math` verifier; runs only inside pool workers, under their time limit.

math-verify is imported lazily, so the trainer's process never loads it. Two things are
changed on top of math-verify (both in this worker process only):

- its plain-expression extractor hands text such as `2/3 + 1` to `sympy.parse_expr`,
  which evaluates Python; here that text (digits and arithmetic signs only) goes to
  math-verify's LaTeX parser instead, so nothing a model writes is ever evaluated;
- before extraction, the response is tidied for what math-verify misreads: punctuation
  just before a closing math delimiter (`$\\frac{1}{3}.$`) and mixed numbers (`4 4/9`).
"""

from __future__ import annotations

import re
from dataclasses import replace
from functools import lru_cache
from typing import Any

from clipo.verifiers.numbers import numbers_equal, parse_number

_SAFE_EXPR_RE = re.compile(r"[\d.\s+\-*/^()×÷]+")
_TRAILING_PUNCT_RE = re.compile(r"(?<!\\)\s*[.,;:](\$\$|\$|\\\]|\\\))")
_MIXED_RE = re.compile(r"(?<![\d.,/\\{$])(-?)(\d{1,6}) (\d{1,6})/(\d{1,6})(?![\d/]|\.\d)(\s*(?:%|percent\b))?")
_MATHRM_LETTER_RE = re.compile(r"\\mathrm\{([A-Za-z])\}")  # \mathrm{e} is Euler's e, not a unit
_mv: Any = None  # the math_verify module, once imported


def _expr_via_latex(expr: str) -> Any:
    """Replacement for math-verify's `parse_expr_cached`: the LaTeX parser, never eval."""
    if not _SAFE_EXPR_RE.fullmatch(expr):
        raise ValueError("not a plain arithmetic expression")
    latex = expr.replace("**", "^").replace("×", "\\times ").replace("÷", "\\div ")
    return _mv.parser.parse_latex_cached(latex)


def _math_verify() -> Any:
    global _mv
    if _mv is None:
        import math_verify
        import math_verify.grader
        import math_verify.parser

        math_verify.parser.parse_expr_cached = _expr_via_latex
        # the time limit is enforced from outside, so math-verify's own must stay off quietly
        math_verify.parser.TIMEOUT_WARNING_SHOWN = math_verify.grader.TIMEOUT_WARNING_SHOWN = True
        _mv = math_verify
    return _mv


def warm_up() -> None:
    """Import math-verify and build its parser once, before the worker takes tasks."""
    check_math("so $\\boxed{\\frac{1}{2}}$", "0.5", True)


def _mixed_to_frac(match: re.Match) -> str:
    sign, whole, num, den = match.group(1), int(match.group(2)), int(match.group(3)), int(match.group(4))
    if den == 0 or num >= den:
        return match.group(0)
    scale = 100 if match.group(5) else 1  # 4 4/9% is (40/9)/100 as a whole
    return f"${sign}\\frac{{{whole * den + num}}}{{{den * scale}}}$"


def tidy_response(text: str) -> str:
    """Fix what math-verify's extraction misreads (see the module docstring)."""
    text = _MATHRM_LETTER_RE.sub(r"\1", _TRAILING_PUNCT_RE.sub(r"\1", text))
    return _MIXED_RE.sub(_mixed_to_frac, text)


def _configs(anchorless: bool) -> list:
    mv = _math_verify()
    return [mv.LatexExtractionConfig(boxed_match_priority=0, try_extract_without_anchor=anchorless),
            mv.ExprExtractionConfig(try_extract_without_anchor=anchorless)]


@lru_cache(maxsize=4096)
def parse_gold(gold: str) -> tuple:
    """math-verify's reading of a ground truth (boxed, then as inline math)."""
    mv = _math_verify()
    gold = _MATHRM_LETTER_RE.sub(r"\1", re.sub(r"(?<!\\)%", r"\\%", gold))
    parsed = mv.parse(f"\\boxed{{{gold}}}", _configs(True), parsing_timeout=None)
    if not any(not isinstance(p, str) for p in parsed):
        parsed = mv.parse(f"${gold}$", _configs(True), parsing_timeout=None) or parsed
    return tuple(parsed)


def check_math(response: str, gold: str, anchorless: bool) -> bool:
    """True when the final answer in `response` equals `gold`.

    Plain numbers on both sides are compared by clipo's exact rule (as in the trainer's
    process for boxed numbers); everything else by math-verify's `verify`.
    """
    mv = _math_verify()
    pred = mv.parse(tidy_response(response), _configs(anchorless), parsing_timeout=None)
    if not pred:
        return False
    gold_number = parse_number(gold)
    pred_number = parse_number(pred[-1]) if isinstance(pred[-1], str) else None
    if gold_number is not None and pred_number is not None:
        # math-verify's matched string drops a trailing %, its sympy value keeps it
        percent = pred_number.percent or (not isinstance(pred[0], str) and pred[0].has(_percent_factor()))
        pred_number = replace(pred_number, percent=percent)
        if numbers_equal(gold_number, pred_number) or not (gold_number.ambiguous or pred_number.ambiguous):
            return numbers_equal(gold_number, pred_number)
    return bool(mv.verify(list(parse_gold(gold)), pred, timeout_seconds=None, allow_set_relation_comp=True))


def _percent_factor() -> Any:
    import sympy

    return sympy.UnevaluatedExpr(sympy.Rational(1, 100))


def gold_problem(gold: str) -> str | None:
    """Why math-verify cannot read `gold`, or None when it can."""
    if parse_number(gold) is not None:
        return None
    parsed = parse_gold(gold)
    if not parsed:
        return f"math-verify extracts nothing from {gold[:200]!r}"
    return None


def math_task(op: str, *args: Any) -> Any:
    """The pool's entry point: "check" -> check_math(...), "gold" -> gold_problem(...)."""
    if op == "check":
        return check_math(*args)
    if op == "gold":
        return gold_problem(*args)
    raise ValueError(f"unknown math task {op!r}")
