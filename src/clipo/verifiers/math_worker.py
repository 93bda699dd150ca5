"""The symbolic part of the `math` verifier; runs only inside pool workers, under their time limit.

math-verify is imported lazily, so the trainer's process never loads it. What is changed
on top of math-verify (in this worker process only):

- its plain-expression extractor hands text such as `2/3 + 1` to `sympy.parse_expr`,
  which evaluates Python; here that text (digits and arithmetic signs only) goes to
  math-verify's LaTeX parser instead, so nothing a model writes is ever evaluated;
- sympy's string parser itself (`parse_expr`, hence `sympify`/`S` of a string, which
  `eval` it) is replaced, wherever math-verify or latex2sympy could reach it, by one that
  reads number literals and bare names and refuses everything else;
- an answer that is a program (`code_answers.py`), or stands on a line of code, is false;
- LaTeX that is a plain number or a simple fraction (`-12`, `0.25`, `\\frac{3}{4}`, `3/4`) is
  read directly into the sympy number latex2sympy would build, skipping its ANTLR parser
  (milliseconds a call, most of a check's time); anything else goes to latex2sympy,
  whose ANTLR parser first runs in SLL mode (ANTLR guarantees the same tree as its
  default LL mode, or a syntax error, on which the text is parsed again in LL mode);
- two constants whose values differ by more than 0.1%, a constant against a polynomial
  that is not constant (`x^2 - 1` against `59`), and a constant against an interval or a
  union are unequal without `simplify` or set algebra;
- before extraction, the response is tidied for what math-verify misreads: punctuation
  just before a closing math delimiter (`$\\frac{1}{3}.$`) and mixed numbers (`4 4/9`).
"""

from __future__ import annotations

import cmath
import re
from collections.abc import Sequence
from dataclasses import replace
from functools import lru_cache
from typing import Any

from clipo.verifiers.code_answers import code_reason
from clipo.verifiers.numbers import numbers_equal, parse_number

_SAFE_EXPR_RE = re.compile(r"[\d.\s+\-*/^()×÷]+")
_TRAILING_PUNCT_RE = re.compile(r"(?<!\\)\s*[.,;:](\$\$|\$|\\\]|\\\))")
_MIXED_RE = re.compile(r"(?<![\d.,/\\{$])(-?)(\d{1,6}) (\d{1,6})/(\d{1,6})(?![\d/]|\.\d)(\s*(?:%|percent\b))?")
_MATHRM_LETTER_RE = re.compile(r"\\mathrm\{([A-Za-z])\}")  # \mathrm{e} is Euler's e, not a unit
_INT_LITERAL_RE = re.compile(r"[-+]?\d{1,400}")
_FLOAT_LITERAL_RE = re.compile(r"[-+]?(?:\d{1,400}\.\d{0,400}|\.\d{1,400})(?:[eE][-+]?\d{1,4})?|[-+]?\d{1,400}[eE][-+]?\d{1,4}")
_NAME_RE = re.compile(r"(?!__)[A-Za-z_][A-Za-z0-9_]{0,40}")
_LATEX_NUMBER_RE = re.compile(r"-?\d{1,50}(?:\.\d{1,50})?")
_LATEX_FRACTION_RE = re.compile(r"(?P<sign>-?)(?:\\frac\{(?P<num>-?\d{1,50})\}\{(?P<den>\d{1,50})\}|"
                                r"(?P<num2>-?\d{1,50})/(?P<den2>\d{1,50}))")
_mv: Any = None  # the math_verify module, once imported
_parse_latex_cached: Any = None  # math-verify's own parse_latex_cached, once imported


def _expr_via_latex(expr: str) -> Any:
    """Replacement for math-verify's `parse_expr_cached`: the LaTeX parser, never eval."""
    if not _SAFE_EXPR_RE.fullmatch(expr):
        raise ValueError("not a plain arithmetic expression")
    latex = expr.replace("**", "^").replace("×", "\\times ").replace("÷", "\\div ")
    return _parse_latex_fast_first(latex)


def _literal_only(text: Any, *args: Any, **kwargs: Any) -> Any:
    """Stands in for sympy's `parse_expr` (which runs `eval`): reads a number literal, refuses the rest.

    latex2sympy turns every number token into `sympy.Number("12.5")`, which goes through
    `sympify`; digits are read here exactly as sympy's `auto_number` would, without eval.
    A bare name (sympy's lazily imported modules sympify some) is sympy's object of that
    name or a Symbol, as parse_expr would return it.
    """
    import sympy

    literal = str(text).strip()
    if _INT_LITERAL_RE.fullmatch(literal):
        return sympy.Integer(int(literal))
    if _FLOAT_LITERAL_RE.fullmatch(literal):
        return sympy.Float(literal, dps=max(15, sum(c.isdigit() for c in literal)))
    if _NAME_RE.fullmatch(literal):  # sympy's own lazy imports sympify names ("yotta")
        found = getattr(sympy, literal, None)  # a lookup, as eval would do it, never a call
        is_sympy = isinstance(found, sympy.Basic) or (isinstance(found, type) and issubclass(found, sympy.Basic))
        return found if is_sympy else sympy.Symbol(literal)
    raise ValueError(f"clipo's verifier never evaluates text as Python (got {literal[:60]!r})")


def _forbid_string_eval() -> None:
    import latex2sympy2_extended.latex2sympy2 as l2s
    import math_verify.parser
    import sympy.parsing
    import sympy.parsing.sympy_parser as sympy_parser

    # every name bound to parse_expr (sympify imports it from sympy_parser at each call)
    for module in (sympy_parser, sympy.parsing, l2s, math_verify.parser):
        module.parse_expr = _literal_only
    sympy_parser.eval_expr = _literal_only


def fast_latex_number(latex: str) -> Any:
    """The sympy number latex2sympy makes of a plain number or simple fraction, or None."""
    import sympy

    text = latex.strip()
    if _LATEX_NUMBER_RE.fullmatch(text):  # as latex2sympy's parse_number reads a number token
        body = text.lstrip("-")
        number = sympy.Number(body.lstrip("0") or "0" if body.isdigit() else body)
        return -number if text.startswith("-") else number
    match = _LATEX_FRACTION_RE.fullmatch(text)
    if match is None:
        return None
    num, den = int(match["num"] or match["num2"]), int(match["den"] or match["den2"])
    if den == 0:
        return None
    return sympy.Rational(-num if match["sign"] else num, den)


def _parse_latex_fast_first(latex: str) -> Any:
    number = fast_latex_number(latex)
    return number if number is not None else _parse_latex_cached(latex)


def two_stage_parsing() -> None:
    """latex2sympy parses in ANTLR's SLL mode first (about 2x faster), in LL mode on any error."""
    import latex2sympy2_extended.latex2sympy2 as l2s
    from antlr4.atn.PredictionMode import PredictionMode

    converter = l2s._Latex2Sympy
    create_parser, parse = converter.create_parser, converter.parse

    def create_parser_in_mode(self: Any, latex: str) -> Any:
        parser = create_parser(self, latex)
        parser._interp.predictionMode = getattr(self, "_prediction_mode", PredictionMode.LL)
        return parser

    def parse_sll_then_ll(self: Any, latex: str) -> Any:
        self._prediction_mode = PredictionMode.SLL
        try:
            return parse(self, latex)
        except Exception:
            self._prediction_mode = PredictionMode.LL
            return parse(self, latex)

    converter.create_parser, converter.parse = create_parser_in_mode, parse_sll_then_ll


def _math_verify() -> Any:
    global _mv
    if _mv is None:
        import math_verify
        import math_verify.grader
        import math_verify.parser

        global _parse_latex_cached
        _parse_latex_cached = math_verify.parser.parse_latex_cached
        math_verify.parser.parse_latex_cached = _parse_latex_fast_first
        math_verify.parser.parse_expr_cached = _expr_via_latex
        _forbid_string_eval()
        two_stage_parsing()
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
    process for boxed numbers); what `plainly_unequal` decides is unequal without
    `simplify`; everything else goes to math-verify's `verify`.
    """
    mv = _math_verify()
    text = tidy_response(response)
    pred = mv.parse(text, _configs(anchorless), parsing_timeout=None)
    if not pred or _is_program(text, pred[-1]):
        return False
    gold_number = parse_number(gold)
    pred_number = parse_number(pred[-1]) if isinstance(pred[-1], str) else None
    if gold_number is not None and pred_number is not None:
        # math-verify's matched string drops a trailing %, its sympy value keeps it
        percent = pred_number.percent or (not isinstance(pred[0], str) and pred[0].has(_percent_factor()))
        pred_number = replace(pred_number, percent=percent)
        if numbers_equal(gold_number, pred_number) or not (gold_number.ambiguous or pred_number.ambiguous):
            return numbers_equal(gold_number, pred_number)
    gold_parsed = parse_gold(gold)
    if plainly_unequal(gold_parsed, pred, gold):
        return False
    return bool(mv.verify(list(gold_parsed), pred, timeout_seconds=None, allow_set_relation_comp=True))


def plainly_unequal(gold_parsed: Sequence[Any], pred: Sequence[Any], gold: str) -> bool:
    """True when gold and answer are each one expression (no percentages), their strings
    differ, and one is a constant and the other an interval or a union (never a set of one
    element), or both are constants whose values differ by more than 0.1%, or one is a
    constant and the other a polynomial (not a bare symbol) that is not constant once
    expanded: math-verify's `verify` would say False, after up to seconds of `simplify` or
    set algebra.
    """
    import sympy

    strings = [gold, *(x for x in (*gold_parsed, *pred) if isinstance(x, str))]
    if any("%" in text or "percent" in text for text in strings):
        return False  # math-verify reads percentages both ways (42% = 0.42 = 42)
    gold_exprs = [g for g in gold_parsed if not isinstance(g, str)]
    pred_exprs = [p for p in pred if not isinstance(p, str)]
    if len(gold_exprs) != 1 or len(pred_exprs) != 1:
        return False
    if {g for g in gold_parsed if isinstance(g, str)} & {p for p in pred if isinstance(p, str)}:
        return False  # math-verify also compares the matched strings
    exprs = (gold_exprs[0], pred_exprs[0])
    for a, b in (exprs, exprs[::-1]):  # math-verify compares {a} with b as sets: never equal
        if isinstance(a, sympy.Expr) and a.is_number and isinstance(b, (sympy.Interval, sympy.Union)):
            return True
    if not all(isinstance(e, sympy.Expr) and not e.has(sympy.UnevaluatedExpr) for e in exprs):
        return False
    constants = [e for e in exprs if e.is_number]
    if len(constants) == 1:  # a polynomial equals a constant only when its expansion has no symbols
        other = exprs[1] if constants[0] is exprs[0] else exprs[0]
        # a bare symbol is math-verify's cheap case, where `e` equals Euler's number
        return not isinstance(other, sympy.Symbol) and other.is_polynomial() and bool(sympy.expand(other).free_symbols)
    if len(constants) != 2:
        return False
    try:
        values = [complex(sympy.N(expr, 30)) for expr in exprs]
    except (TypeError, ValueError, OverflowError):
        return False  # infinities, nan, values that do not evaluate
    if not all(map(cmath.isfinite, values)):
        return False
    gold_value, pred_value = values
    return abs(gold_value - pred_value) > 1e-3 * max(1.0, abs(gold_value), abs(pred_value))


def _is_program(text: str, matched: Any) -> bool:
    """True when the extracted answer, or the line it stands on, is code (see `code_answers.py`)."""
    if not isinstance(matched, str):
        return False
    at = text.rfind(matched)
    line = text[text.rfind("\n", 0, at) + 1 : (text.find("\n", at + len(matched)) + 1 or len(text) + 1) - 1]
    return code_reason(matched) is not None or (at >= 0 and code_reason(line, in_prose=True) is not None)


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
