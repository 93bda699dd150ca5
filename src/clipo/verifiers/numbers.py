"""Plain numbers: parse them exactly (no eval, no sympy) and compare them as math-verify does.

`parse_number` reads a whole answer such as `1,000`, `-3.5`, `28\\%`, `\\frac{3}{4}`,
`4 4/9` or `\\$12 dollars`; `last_number` finds the last number in free text. Values
are `Fraction`s, so comparisons are exact; the only rounding is the one math-verify
applies when either side is written as a decimal (6 places).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

# Longer digit strings are not answers (and would make Fraction slow): treat as text.
_MAX_DIGITS = 60
_FLOAT_ROUNDING = 6

_INT = r"(?:[1-9]\d{0,2}(?:,\d{3})+|[1-9]\d{0,2}(?: \d{3})+|\d+)"
_DEC = rf"(?:{_INT}(?:\.\d*)?|\.\d+|\d+,\d+)"
_NUMBER_RE = re.compile(
    rf"(?P<sign>[-+]?)\s*(?:(?P<whole>\d+)\s+)?"
    rf"(?:\\frac\{{(?P<fnum>\d+)\}}\{{(?P<fden>\d+)\}}|(?P<snum>\d+)/(?P<sden>\d+)|(?P<dec>{_DEC}))"
    r"\s*(?P<pct>\\?%|percent|pct)?"
)
_CURRENCY_RE = re.compile(r"^(?:\\\$|\$|€|£|¥|₹|USD|Rs\.?)\s*")
_UNIT_RE = re.compile(r"(?:\s+[a-zA-Z]+\.?(?:\^?[23²³])?){1,3}$|(?:\^\{?\\circ\}?|°)$")
_WRAPPER_RE = re.compile(r"\\(?:text|textbf|textnormal|mathrm|mbox)\s*\{([^{}]*)\}")
_LAST_NUMBER_RE = re.compile(
    r"(?<![\w.])-?(?:\d+\s+\d+/\d+|\d+/\d+|[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
    r"(?:\s*(?:%|percent\b))?"
)


@dataclass(frozen=True)
class PlainNumber:
    """A number as written: its value, whether a % was attached, whether it had a decimal point."""

    value: Fraction
    percent: bool = False
    decimal: bool = False
    ambiguous: bool = False  # a decimal comma such as 1,22 (could also be the pair 1, 22)

    @property
    def scaled(self) -> Fraction:
        return self.value / 100 if self.percent else self.value


def _strip_dressing(text: str) -> str:
    text = _WRAPPER_RE.sub(r" \1", text)
    text = text.replace("{,}", ",").replace(",\\!", ",").replace("\\!", "").replace("\\,", "")
    text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\$", "\x01")
    text = _CURRENCY_RE.sub("", text.replace("$", "").replace("\x01", "$").strip()).strip()
    return _UNIT_RE.sub("", text).strip().rstrip(".").strip()


def parse_number(text: str) -> PlainNumber | None:
    """The plain number that `text` is as a whole, or None if it is anything else."""
    text = _strip_dressing(text)
    if len(text) > 2 * _MAX_DIGITS or sum(c.isdigit() for c in text) > _MAX_DIGITS:
        return None
    if re.fullmatch(r"-?[1-9]\d{0,2}(?: \d{3})+", text):
        text = text.replace(" ", "")  # 1 000 000: thousands separated by spaces
    match = _NUMBER_RE.fullmatch(text)
    if match is None:
        return None
    group = match.groupdict()
    ambiguous = decimal = False
    if group["dec"] is not None:
        dec = group["dec"]
        if re.fullmatch(r"\d+,\d+", dec) and not re.fullmatch(r"[1-9]\d{0,2},\d{3}", dec):
            dec, ambiguous = dec.replace(",", "."), True  # decimal comma, as math-verify reads it
        dec = dec.replace(",", "").replace(" ", "")
        value, decimal = Fraction(dec if dec != "." else "0"), "." in dec
    else:
        num, den = (group["fnum"], group["fden"]) if group["fnum"] else (group["snum"], group["sden"])
        if int(den) == 0:
            return None
        value = Fraction(int(num), int(den))
    if group["whole"] is not None:
        if group["dec"] is not None or value >= 1:
            return None  # "3 5" or "2 7/3" are not mixed numbers
        value += int(group["whole"])
    if group["sign"] == "-":
        value = -value
    return PlainNumber(value, percent=group["pct"] is not None, decimal=decimal, ambiguous=ambiguous)


def last_number(text: str) -> PlainNumber | None:
    """The last number written in free text (thousands commas, fractions, mixed numbers, %)."""
    text = text.replace("{,}", ",").replace(",\\!", ",")
    matches = _LAST_NUMBER_RE.findall(text)
    return parse_number(matches[-1]) if matches else None


def _close(a: Fraction, b: Fraction, rounded: bool) -> bool:
    return round(a, _FLOAT_ROUNDING) == round(b, _FLOAT_ROUNDING) if rounded else a == b


def numbers_equal(gold: PlainNumber, pred: PlainNumber) -> bool:
    """math-verify's numeric rule: exact for integers and fractions, 6 decimal places
    when either side is a decimal; `9%` equals `9`; a gold percentage also accepts its
    bare number (gold `28%` accepts `28` and `0.28`).
    """
    rounded = gold.decimal or pred.decimal
    if gold.percent or pred.percent:
        both_integers = gold.value.denominator == 1 and pred.value.denominator == 1
        if both_integers and gold.value == pred.value:
            return True
        if gold.percent and _close(gold.value, pred.scaled, rounded):
            return True
    return _close(gold.scaled, pred.scaled, rounded)
