"""Hand-written equivalences per answer kind, in both directions (gold <-> response)."""

from __future__ import annotations

import pytest

# (a, b): each, as a gold, must accept the other boxed in a response.
EQUIVALENT = [
    ("\\frac{1}{2}", "0.5"),                      # fraction vs decimal
    ("\\dfrac{3}{4}", "\\frac{3}{4}"),            # \dfrac vs \frac
    ("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}"),  # radicals: sqrt(2)/2 = 1/sqrt(2)
    ("2\\sqrt{3}", "\\sqrt{12}"),
    ("\\{1, 2, 3\\}", "\\{3, 2, 1\\}"),           # sets ignore order
    ("[0, 1)", "[0,1)"),                          # intervals
    ("(-\\infty, 2] \\cup (3, \\infty)", "(-\\infty,2]\\cup(3,\\infty)"),
    ("25\\%", "25"),                              # a gold percentage accepts its number
    ("12000", "12{,}000"),                        # commas in numbers
    ("1234567", "1,234,567"),
    ("7", "x = 7"),                               # x= prefix
    ("\\text{Evelyn}", "Evelyn"),                 # \text wrapper
    ("5", "5 \\text{ cm}"),                       # units
    ("90", "90^\\circ"),
]
NOT_EQUIVALENT = [
    ("\\frac{1}{2}", "0.6"),
    ("\\sqrt{2}", "\\sqrt{3}"),
    ("\\{1, 2\\}", "\\{1, 3\\}"),
    ("[0, 1)", "[0, 1]"),
    ("0.28", "28"),
    ("12000", "1200"),
    ("7", "x = 8"),
    ("\\text{Evelyn}", "Carla"),
]


@pytest.mark.parametrize(("a", "b"), EQUIVALENT)
def test_equivalent_both_directions(math_verifier, a, b):
    responses = [f"Thus the answer is $\\boxed{{{b}}}$.", f"Thus the answer is $\\boxed{{{a}}}$."]
    assert math_verifier(responses, [a, b]) == [1.0, 1.0]


@pytest.mark.parametrize(("a", "b"), NOT_EQUIVALENT)
def test_not_equivalent_both_directions(math_verifier, a, b):
    responses = [f"Thus the answer is $\\boxed{{{b}}}$.", f"Thus the answer is $\\boxed{{{a}}}$."]
    assert math_verifier(responses, [a, b]) == [0.0, 0.0]


def test_percentage_response_is_its_fraction(math_verifier):
    # 28% = 7/25; a decimal gold 0.28 accepts 28% but not a bare 28
    assert math_verifier(["\\boxed{28\\%}", "\\boxed{28\\%}", "\\boxed{28}"], ["\\frac{7}{25}", "0.28", "0.28"]) == [
        1.0, 1.0, 0.0]


def test_unboxed_fallbacks_and_their_switch(math_verifier):
    from clipo.verifiers import MathVerifier

    responses = ["2 + 5 = 7, so the answer is 7.", "We get 3 apples and then 4 more, 7 in all", "no idea"]
    assert math_verifier(responses, ["7", "7", "7"]) == [1.0, 1.0, 0.0]
    with MathVerifier(fallback="none", num_workers=1) as boxed_only:
        assert boxed_only(responses + ["\\boxed{7}"], ["7"] * 4) == [0.0, 0.0, 0.0, 1.0]
    with MathVerifier(fallback="answer_phrase", num_workers=1) as phrase_only:
        assert phrase_only(responses, ["7"] * 3) == [1.0, 0.0, 0.0]


def test_gold_solution_reduced_to_its_boxed_answer(math_verifier):
    solution = "We compute $2+2=4$, so the total is $\\boxed{4}$."
    assert math_verifier(["\\boxed{4}", "\\boxed{2}"], [solution, solution]) == [1.0, 0.0]


@pytest.mark.parametrize(("response", "gold", "score"), [
    ("The answer is 1,200 dollars.", "1200", 1.0),           # commas and units
    ("#### 72", "72", 1.0),                                   # GSM8K's marker
    ("She pays $18.00.", "18", 1.0),                          # currency and trailing period
    ("So \\boxed{\\$1,000}", "1000", 1.0),
    ("3 + 4 = 7 apples. Then 7 - 2 = 5.", "5", 1.0),          # last number
    ("The answer is 12.", "13", 0.0),
    ("", "5", 0.0),
    ("The answer is NaN", "NaN", 1.0),                        # a word ground truth
])
def test_gsm8k_numbers(gsm8k_verifier, response, gold, score):
    assert gsm8k_verifier([response], [gold]) == [score]


@pytest.mark.parametrize(("response", "gold", "score"), [
    ("\\boxed{C}", "C", 1.0),
    ("\\boxed{\\text{(C)}}", "C", 1.0),
    ("The answer is (B).", "B", 1.0),
    ("B. Because the others are wrong.", "B", 1.0),
    ("A cat is not a dog, so I pick D", "D", 1.0),            # "A" and "I" as words are skipped
    ("\\boxed{T}", "T", 1.0),                                 # TruthfulQA goes up to T
    ("The answer is (B).", "C", 0.0),
    ("I do not know", "A", 0.0),
])
def test_choice_letters(choice_verifier, response, gold, score):
    assert choice_verifier([response], [gold]) == [score]
