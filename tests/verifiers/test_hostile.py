"""Hostile responses score 0 within the time limit and touch nothing outside the verifier."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest

from clipo.verifiers import MathVerifier

PWNED = Path("/tmp/clipo_verifier_pwned")
INJECTIONS = [
    f"\\boxed{{__import__('os').system('touch {PWNED}')}}",
    f"\\boxed{{eval(\"__import__('os').system('touch {PWNED}')\")}}",
    f"The answer is $__import__('os').system('touch {PWNED}')$",
    f"{PWNED} = 1; exec(open('{PWNED}','w').write('x'))",
]
HOSTILE = {
    "tower": "\\boxed{9^{9^{9^{9}}}}",
    "tower_plain": "The answer is 9^9^9^9",
    "factorial": "\\boxed{1000000!}",
    "power": "\\boxed{10^{10^{100}}}",
    "nested_braces": "\\boxed{" + "{" * 5000 + "1" + "}" * 5000 + "}",
    "unbalanced_braces": "\\boxed{" + "{" * 5000,
    "five_megabytes": "7 " * 2_500_000,
    "nul_bytes": "\\boxed{7\x00}\x00\x00 the answer is \x007",
    "no_answer": "I am not sure.",
    "empty": "",
}


def test_code_injection_is_never_run(math_verifier):
    PWNED.unlink(missing_ok=True)
    scores = math_verifier(INJECTIONS, ["7"] * len(INJECTIONS))
    assert scores == [0.0] * len(INJECTIONS)
    assert not PWNED.exists()


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_response_scores_zero_in_time(math_verifier, name):
    gold = "8"  # never the answer, so any 1.0 would be a false positive
    start = time.monotonic()
    assert math_verifier([HOSTILE[name]], [gold]) == [0.0]
    assert time.monotonic() - start < math_verifier.timeout + 2.0


def test_nul_bytes_do_not_hide_a_right_answer(math_verifier):
    assert math_verifier(["\\boxed{7\x00}"], ["7"]) == [1.0]


def test_multi_megabyte_response_reads_only_its_tail(math_verifier):
    # the answer at the end of a 5 MB response is found; one at its start is not read
    assert math_verifier(["x " * 2_500_000 + "\\boxed{7}", "\\boxed{7}" + " x" * 2_500_000], ["7", "7"]) == [1.0, 0.0]


def test_prefilter_rejects_without_a_worker(math_verifier):
    before = math_verifier.stats()
    deep = "\\boxed{" + "{" * 1500 + "1" + "}" * 1500 + "}"  # fits in the 4096-character tail
    math_verifier([HOSTILE["tower"], HOSTILE["factorial"], HOSTILE["power"], deep], ["8"] * 4)
    after = math_verifier.stats()
    assert after["rejected"] - before["rejected"] == 4
    assert after["pooled"] == before["pooled"]


def test_timeout_is_counted_and_pool_recovers():
    # A 0.5 s limit with a check that takes longer: a 2-level power tower passes the
    # prefilter (its bases are not plain numbers, so its size is not estimated) but sqrt(2)^(sqrt(2)^1000)
    # makes sympy compute.
    with MathVerifier(timeout=0.5, num_workers=1) as verifier:
        assert verifier(["\\boxed{2}"], ["\\frac{4}{2}"]) == [1.0]  # pool started and warm
        start = time.monotonic()
        assert verifier(["\\boxed{\\sqrt{2}^{\\sqrt{2}^{1000}}}"], ["\\sqrt{2}"]) == [0.0]
        assert time.monotonic() - start < 5.0
        assert verifier.stats()["timeouts"] == 1
        assert verifier(["\\boxed{\\frac{1}{2}}", "\\boxed{\\sqrt{4}}"], ["0.5", "2"]) == [1.0, 1.0]
        assert verifier.stats()["timeouts"] == 1


@pytest.mark.parametrize("answer", ["10^{10^{10}}", "(10)^{(10)^{10}}", "9^{9^{9}}", "2^{10^{6}} + 1",
                                    "The answer is 7^{7^{7}}"])
def test_huge_powers_are_rejected_before_any_worker(math_verifier, answer):
    # 10^(10^10) has 10^10 digits: sympy would build it until the 5 s limit (8 of them cost 31 s)
    response = answer if answer.startswith("The") else f"\\boxed{{{answer}}}"
    before = math_verifier.stats()
    start = time.monotonic()
    assert math_verifier([response] * 8, ["8"] * 8) == [0.0] * 8
    assert time.monotonic() - start < 0.5
    after = math_verifier.stats()
    assert after["rejected"] - before["rejected"] == 8 and after["pooled"] == before["pooled"]


def test_power_digits_estimates_the_size_of_towers():
    from clipo.verifiers.math_verifier import power_digits, too_many_digits

    assert power_digits([10, 100]) == pytest.approx(100)  # a googol has 101 digits
    assert power_digits([2, 10]) == pytest.approx(10 * math.log10(2))  # 1024
    assert power_digits([10, 10, 10]) == pytest.approx(1e10)
    assert power_digits([1, 10, 10, 10]) == 0 and power_digits([0, 99]) == 0
    assert not too_many_digits("2^{10} + 10^{100} - 3^{3^{8}}")  # real answers, 3^6561 has 3131 digits
    assert too_many_digits("10^{10^{10}}") and too_many_digits("x + 99^{99^{99}}")


@pytest.mark.parametrize("truth", ["", "   ", None, "$$", "\\boxed{}"])
def test_nothing_is_correct_against_an_empty_ground_truth(math_verifier, gsm8k_verifier, choice_verifier, truth):
    # before: the math verifier scored \boxed{} against '' as 1.0 (two equal empty strings)
    responses = ["\\boxed{}", "", "The answer is $ $.", "\\boxed{None}"]
    for verifier in (math_verifier, gsm8k_verifier, choice_verifier):
        if truth in ("$$", "\\boxed{}") and verifier is not math_verifier:
            continue  # not empty as text; those verifiers reject the form itself
        assert verifier(responses, [truth] * len(responses)) == [0.0] * len(responses)
    if truth is not None:
        assert math_verifier.ground_truth_problems([truth, "7"])[0] is not None
    assert math_verifier.ground_truth_problems([None, "7"]) == ["the ground truth is null", None]
