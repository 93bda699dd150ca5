"""Cheap, linear-time text handling shared by the verifiers (runs in the trainer's process).

Everything here is bounded: responses are cut to their tail before any regex runs,
brace matching is a single forward scan, and no pattern can backtrack
catastrophically. Nothing here evaluates text.
"""

from __future__ import annotations

import re

# A reasoning model states its answer at the end, so a multi-megabyte response is cut
# to its last characters before anything scans it; this bounds every regex below.
DEFAULT_TAIL_CHARS = 4096
# Deeper nesting than this inside a final answer is never a real answer (and would make
# the LaTeX parser recurse), so such answers are scored 0 without reaching a worker.
MAX_BRACE_DEPTH = 64

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
# \text{...}-style wrappers whose content is the answer itself.
_WRAPPER_RE = re.compile(r"\\(?:text|textbf|textnormal|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")
_SPACING_RE = re.compile(r"\\[,;:! ]|\\q?quad|~|\\left|\\right|\\displaystyle")
_FRAC_RE = re.compile(r"\\[dtc]frac")


def clean_response(text: str, tail_chars: int = DEFAULT_TAIL_CHARS) -> str:
    """Drop NUL bytes and keep only the last `tail_chars` characters of `text`."""
    if len(text) > tail_chars:
        text = text[-tail_chars:]
    return text.replace("\x00", "")


def find_boxed(text: str) -> list[tuple[int, int]]:
    """(start, end) spans of the contents of every complete `\\boxed{}`/`\\fbox{}` in `text`.

    One forward scan with a stack of open braces (O(len(text)) whatever the input); a
    box left open (e.g. cut by truncation) is skipped. Spans are ordered by where the
    box closes. Callers reject contents nested deeper than `MAX_BRACE_DEPTH`.
    """
    box_opens = {m.end() - 1 for m in _BOX_RE.finditer(text)}
    spans: list[tuple[int, int]] = []
    stack: list[int] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == "\\":  # an escaped brace \{ or \} does not count
            i += 2
            continue
        if char == "{":
            stack.append(i)
        elif char == "}" and stack:
            opened = stack.pop()
            if opened in box_opens:
                spans.append((opened + 1, i))
        i += 1
    return spans


def last_boxed(text: str) -> str | None:
    """Contents of the last complete `\\boxed{}` in `text`, or None."""
    spans = find_boxed(text)
    return text[spans[-1][0] : spans[-1][1]] if spans else None


def brace_depth(text: str) -> int:
    """Deepest `{` nesting in `text` (escaped braces ignored)."""
    depth = deepest = 0
    for char in text.replace("\\{", "").replace("\\}", ""):
        if char == "{":
            depth += 1
            deepest = max(deepest, depth)
        elif char == "}":
            depth = max(depth - 1, 0)
    return deepest


def braces_balanced(text: str) -> bool:
    """True when every `{` in `text` is closed (escaped braces ignored)."""
    depth = 0
    for char in text.replace("\\{", "").replace("\\}", ""):
        depth += (char == "{") - (char == "}")
        if depth < 0:
            return False
    return depth == 0


def normalize_answer(answer: str) -> str:
    """A canonical string for the fast path: `\\dfrac` -> `\\frac`, wrappers, spacing,
    `$`, a trailing period and whitespace removed. Two answers with equal canonical
    strings are equal; unequal strings prove nothing (that is what math-verify is for).
    """
    text = _FRAC_RE.sub(r"\\frac", answer)
    for _ in range(3):  # nested wrappers, bounded
        text = _WRAPPER_RE.sub(r"\1", text)
    text = _SPACING_RE.sub("", text).replace("$", "")
    text = re.sub(r"\s+", "", text)
    return text.rstrip(".").strip()


# "The final answer is X", "Answer: X", "#### X" (GSM8K's marker); X runs to the end of
# its sentence or line (bounded, so the pattern stays linear on any input).
_STATEMENT_RE = re.compile(r"(?i:final answer|the answer|answer|####)\s*(?:is\b|:|=)?\s*:?\s*([^\n]{1,120})")


def answer_statement(text: str) -> str | None:
    """The text after the last explicit answer statement, up to its sentence end, or None."""
    last = None
    for last in _STATEMENT_RE.finditer(text):
        pass
    if last is None:
        return None
    return re.split(r"\.(?:\s|$)", last.group(1), maxsplit=1)[0].strip() or None
