"""Answers that are programs, not mathematics: they score 0 whatever their value.

A model rewarded for answers that some parser happens to evaluate to the ground truth
(`(lambda: 42)()`, `__import__('os').getpid()`, `42 if True else 0`, `(42).real`)
learns to write code instead of mathematics; latex2sympy also reads much of such text
as a product of letters around the right number. `code_reason` recognises the shapes of
Python (and sympy) code that mathematics never has. It is pure string work on an
already bounded answer: linear regexes, nothing is evaluated.

Mathematics stays accepted: LaTeX commands (`\\lambda`, `\\max`, `\\sin`), primes
(`f'(x)`), function application of one-letter or mathematical names (`f(42)`, `sqrt(2)`,
`gcd(4, 6)`, `Var(X)`), implicit products (`xy(x+y)`), decimals and `**` powers.
"""

from __future__ import annotations

import builtins
import re

# Names that are mathematical functions when called without a backslash.
MATH_FUNCTIONS = frozenset(
    "abs max min sqrt cbrt exp log ln lg sin cos tan cot sec csc arcsin arccos arctan arccot asin acos atan "
    "sinh cosh tanh coth arsinh arcosh artanh gcd lcm det tr deg arg sgn sign floor ceil mod binom choose "
    "erf lim sup inf dim ker rank span var cov".split())
# Python's builtin callables and sympy/os operations: code when called (`name(`, no space:
# prose says "the sum (a + b)"; keywords such as `or(` are operators, and the rules below
# catch the keyword shapes).
CODE_CALLS = (frozenset(n for n in dir(builtins) if n.islower() and not n.startswith("_"))
              | frozenset("simplify expand factor solve subs evalf sympify nsimplify integrate diff lambdify "
                          "system popen getpid listdir remove rmdir unlink walk urlopen".split())) - MATH_FUNCTIONS

_RULES: tuple[tuple[str, re.Pattern], ...] = (
    ("dunder name", re.compile(r"__[A-Za-z]")),
    ("lambda", re.compile(r"(?<![\\A-Za-z])lambda\b\s*(?:[A-Za-z_*][\w\s,=*]*)?:")),
    ("import", re.compile(r"(?<![\\\w])(?:import\s+[A-Za-z_]|from\s+[A-Za-z_][\w.]*\s+import\b)")),
    ("conditional expression", re.compile(r"[\w)\]'\"]\s+if\s+[^\n]*?\s+else\s+[\w(\[\-'\"]")),
    ("comprehension", re.compile(r"[\[({][^\[\](){}\n]*?\S\s+for\s+[A-Za-z_]\w*(?:\s*,\s*[A-Za-z_]\w*)*\s+in\s")),
    ("attribute access", re.compile(r"(?:(?<![\\\w])(?:[A-Za-z_]\w*|\d+j?\s*)|[)\]'\"])\.[A-Za-z_](?:\w+|\s*\()")),
    ("empty call", re.compile(r"[\w)\]]\(\s*\)")),
    ("indexing", re.compile(r"[)\]'\"]\s*\[\s*-?\d+\s*\]")),
    ("string literal", re.compile(r"[(\[{,:=$]\s*['\"]|^\s*(?:'[^'\n]*'|\"[^\"\n]*\")\s*$")),
    ("code call", re.compile(r"(?<![\\\w])([A-Za-z_]\w*)\(")),
    ("statement", re.compile(r"(?<![\\\w])(?:def|return|yield|class|exec|eval)\b\s*[\w(]")),
)


def code_reason(answer: str) -> str | None:
    """Which code shape `answer` has (e.g. "lambda", "attribute access"), or None for mathematics."""
    for name, pattern in _RULES:
        for match in pattern.finditer(answer):
            if name != "code call" or _is_code_call(match.group(1)):
                return name
    return None


def _is_code_call(name: str) -> bool:
    if name in CODE_CALLS:
        return True
    # `Rational(1, 2)`, `Integer(42)`, `my_func(3)`: not how mathematics names functions
    # (`Var(X)`, `Pr(A)`, `f_1(x)` and `xy(x+y)` stay mathematics).
    return re.fullmatch(r"[A-Z][a-z]{3,}\w*|[A-Za-z]{2,}_[A-Za-z]{2,}\w*", name) is not None
