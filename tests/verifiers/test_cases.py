"""math-verify's own labelled cases: clipo's math/choice verifiers must agree with more than math-verify."""

from __future__ import annotations

import json
import re

import pytest

from clipo.verifiers import MathVerifier
from tests.verifiers.conftest import cases_file

MATH_VERIFY_AGREES = 254  # math-verify 0.9.0 alone, as recorded in the cases' README


@pytest.fixture(scope="module")
def unhurried_math_verifier():
    # Agreement must not depend on machine load: a few cases take seconds of sympy on a
    # busy machine (one took 4.3 s of a 5 s limit), so this test allows 60 s a check.
    with MathVerifier(timeout=60.0, num_workers=2) as verifier:
        yield verifier


def test_agreement_with_labels_beats_math_verify(unhurried_math_verifier, choice_verifier, capsys):
    if not cases_file().exists():
        pytest.skip(f"labelled cases not found at {cases_file()} (set CLIPO_VERIFIER_CASES)")
    rows = [json.loads(line) for line in cases_file().read_text().splitlines() if line.strip()]
    # a bare capital letter is a multiple-choice gold: the choice verifier's job
    is_letter = [re.fullmatch(r"[A-J]", row["gold"]) is not None for row in rows]
    letter_rows = [row for row, letter in zip(rows, is_letter) if letter]
    math_rows = [row for row, letter in zip(rows, is_letter) if not letter]
    scores = dict(zip((r["id"] for r in math_rows),
                      unhurried_math_verifier([r["pred"] for r in math_rows], [r["gold"] for r in math_rows])))
    scores |= dict(zip((r["id"] for r in letter_rows),
                       choice_verifier([r["pred"] for r in letter_rows], [r["gold"] for r in letter_rows])))
    misses = [r["id"] for r in rows if (scores[r["id"]] == 1.0) != r["expected"]]
    agree = len(rows) - len(misses)
    with capsys.disabled():
        print(f"\nverifier-cases: clipo agrees on {agree}/{len(rows)} (math-verify alone: {MATH_VERIFY_AGREES})")
    assert len(rows) == 282
    assert agree > MATH_VERIFY_AGREES, misses
    assert agree == len(rows), misses  # every labelled case
