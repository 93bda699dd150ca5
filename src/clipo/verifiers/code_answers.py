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

# Python's builtin callables and sympy/os operations are code when called (`name(`, no
# space: prose says "the sum (a + b)"); `abs`, `max` and `min` are also mathematics.
# Keywords such as `or(` are operators; the rules below catch the keyword shapes.
CODE_CALLS = (frozenset(n for n in dir(builtins) if n.islower() and not n.startswith("_"))
              | frozenset("simplify expand factor solve subs evalf sympify nsimplify integrate diff lambdify "
                          "system popen getpid listdir remove rmdir unlink walk urlopen".split())) - {"abs", "max", "min"}
# Quotes are prose's, too ('Answer: "12"'): in a line of prose, strings alone are no sign of code.
_NOT_IN_PROSE = frozenset({"string literal"})

_RULES: tuple[tuple[str, re.Pattern], ...] = (
    ("dunder name", re.compile(r"__[A-Za-z]")),
    ("lambda", re.compile(r"(?<![\\A-Za-z])lambda\b\s*(?:[A-Za-z_*][\w\s,=*]*)?:")),
    ("import", re.compile(r"(?<![\\\w])(?:import\s+[A-Za-z_]|from\s+[A-Za-z_][\w.]*\s+import\b)")),
    ("conditional expression", re.compile(r"[\w)\]'\"]\s+if\s+[^\n,.;]*?\s+else\s+[\w(\[\-'\"]")),
    ("comprehension", re.compile(r"[\[({][^\[\](){}\n]*?\S\s+for\s+[A-Za-z_]\w*(?:\s*,\s*[A-Za-z_]\w*)*\s+in\s")),
    ("attribute access", re.compile(r"(?:(?<![\\\w])(?:[A-Za-z_]\w*|\d+j?\s*)|[)\]'\"])\.[A-Za-z_](?:\w+|\s*\()")),
    ("empty call", re.compile(r"[\w)\]]\(\s*\)")),
    ("indexing", re.compile(r"[)\]'\"]\[\s*-?\d+\s*\]")),
    ("string literal", re.compile(r"[(\[{,:=$]\s*['\"]|^\s*(?:'[^'\n]*'|\"[^\"\n]*\")\s*$")),
    ("code call", re.compile(r"(?<![\\\w])([A-Za-z_]\w*)\(")),
    ("definition", re.compile(r"(?<![\\\w])(?:def\s+[A-Za-z_]\w*\s*\(|class\s+[A-Za-z_]\w*\s*[:(])")),
)

# Every rule needs one of these: `_`, `(`, `[`, a quote, `.` before a name, or a keyword.
_SIGN_RE = re.compile(r"[_(\['\"]|\.[A-Za-z_(]|\b(?:import|lambda|class|def|if|for)\b")


def code_reason(answer: str, in_prose: bool = False) -> str | None:
    """Which code shape `answer` has (e.g. "lambda", "attribute access"), or None for mathematics.

    `in_prose`: `answer` is a line of prose around the answer, where quotes are no sign of code.
    """
    if _SIGN_RE.search(answer) is None:
        return None  # the common case, in one scan: nothing any rule needs
    for name, pattern in _RULES:
        if in_prose and name in _NOT_IN_PROSE:
            continue
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
