"""`verifier=choice`: a multiple-choice letter (MMLU, TruthfulQA, CommonsenseQA).

Letters run from A to `max_letter` (default "Z": TruthfulQA questions have up to 20
options, A-T).
The answer is the letter in the last `\\boxed{}`; without one, `fallback` decides:
`"last_letter"` (default) takes an explicit statement ("the answer is (C)"), else a
letter opening the response ("C. because..."), else the last standalone capital letter
(skipping the words "A" and "I"); `"answer_phrase"` takes only explicit statements;
`"none"` scores unboxed responses 0. Pure string work: it never needs a worker.
"""

from __future__ import annotations

import re

from clipo.registry import VERIFIERS
from clipo.verifiers.base import Verifier
from clipo.verifiers.text import DEFAULT_TAIL_CHARS, answer_statement, clean_response, last_boxed

FALLBACKS = ("none", "answer_phrase", "last_letter")
_WRAPPER_RE = re.compile(r"\\(?:text|textbf|mathrm|mathbf)\s*\{([^{}]*)\}")
_STANDALONE_RE = r"(?<![A-Za-z0-9'])\(?([{}])\)?(?![A-Za-z0-9'])"


def leading_letter(text: str, letters: str = "A-Z") -> str | None:
    """The letter an answer starts with: "C", "(C)", "**C**", "C. because", "\\text{(C)}"."""
    text = _WRAPPER_RE.sub(r"\1", text).replace("$", "").strip()
    match = re.match(rf"\**\(?([{letters}])\)?\**(?:$|[.:)\s,])", text)
    if match is None or (match.group(1) in "AI" and re.match(r"A\s+[a-z]|I\s+[a-z]", text)):
        return None  # the word "A" or "I" opening a sentence is not a choice
    return match.group(1)


def last_standalone_letter(text: str, letters: str = "A-Z") -> str | None:
    """The last capital letter standing alone; "A" and "I" not when they open a lowercase word."""
    found = [m for m in re.finditer(_STANDALONE_RE.format(letters), text)
             if not (m.group(1) in "AI" and re.match(r"\s+[a-z]", text[m.end():m.end() + 2]))]
    return found[-1].group(1) if found else None


@VERIFIERS.register("choice")
class ChoiceVerifier(Verifier):
    """Exact match of the chosen letter against a letter ground truth.

    Args:
        fallback: "last_letter", "answer_phrase" or "none" (see the module docstring).
        tail_chars: only the last `tail_chars` characters of a response are read.
        max_letter: the last option letter ("D" for four-option sets).
    """

    fallbacks = FALLBACKS

    def __init__(self, fallback: str = "last_letter",
                 tail_chars: int = DEFAULT_TAIL_CHARS, max_letter: str = "Z") -> None:
        super().__init__(fallback=fallback, tail_chars=tail_chars)  # no check needs a worker or a time limit
        if not re.fullmatch(r"[B-Z]", max_letter):
            raise ValueError(f"max_letter must be one capital letter B-Z, got {max_letter!r}")
        self.letters = f"A-{max_letter}"

    def extract(self, response: str) -> str | None:
        """The letter `response` chooses, or None."""
        text = clean_response(response, self.tail_chars)
        boxed = last_boxed(text)
        if boxed is not None:
            return leading_letter(boxed, self.letters)
        if self.fallback == "none":
            return None
        statement = answer_statement(text)
        if statement is not None and (letter := leading_letter(statement, self.letters)) is not None:
            return letter
        if self.fallback == "answer_phrase":
            return None
        return leading_letter(text, self.letters) or last_standalone_letter(text, self.letters)

    def _precheck(self, response: str, ground_truth: str) -> float:
        self.validate_ground_truth(ground_truth)
        self._counts["fast_path"] += 1
        return float(self.extract(response) == leading_letter(ground_truth, self.letters))

    def validate_ground_truth(self, ground_truth: str) -> None:
        text = _WRAPPER_RE.sub(r"\1", str(ground_truth)).replace("$", "").strip()
        if re.fullmatch(rf"\(?[{self.letters}]\)?\.?", text) is None:
            raise ValueError(f"choice ground truth {str(ground_truth)[:100]!r} is not a single letter {self.letters}; "
                             "use verifier=math or verifier=gsm8k for other answers")
