"""Hostile responses score 0 within the time limit and touch nothing outside the verifier."""

from __future__ import annotations

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
    # prefilter (legitimate answers have those) but 99^(99^99) makes sympy compute.
    with MathVerifier(timeout=0.5, num_workers=1) as verifier:
        assert verifier(["\\boxed{2}"], ["\\frac{4}{2}"]) == [1.0]  # pool started and warm
        start = time.monotonic()
        assert verifier(["\\boxed{99^{99^{99}} - 1}"], ["\\sqrt{2}"]) == [0.0]
        assert time.monotonic() - start < 5.0
        assert verifier.stats()["timeouts"] == 1
        assert verifier(["\\boxed{\\frac{1}{2}}", "\\boxed{\\sqrt{4}}"], ["0.5", "2"]) == [1.0, 1.0]
        assert verifier.stats()["timeouts"] == 1
