"""The contract the trainer and data code rely on: registry, call shape, counters, validation, cleanup."""

from __future__ import annotations

import pickle

import pytest

from clipo.registry import VERIFIERS
from clipo.verifiers import ChoiceVerifier, GSM8KVerifier, MathVerifier
from clipo.verifiers.pool import WorkerPool


def test_registered_names_build_from_plain_kwargs():
    assert {"math", "choice", "gsm8k"} <= set(VERIFIERS.names())
    built = VERIFIERS.build({"name": "math", "timeout": 2.0, "num_workers": 1, "fallback": "none"})
    assert isinstance(built, MathVerifier) and built.timeout == 2.0 and built.fallback == "none"
    assert isinstance(VERIFIERS.build({"name": "choice"}), ChoiceVerifier)
    assert isinstance(VERIFIERS.build({"name": "gsm8k"}), GSM8KVerifier)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"fallback": "guess"}, "fallback must be one of"),
    ({"timeout": 0}, "timeout must be > 0"),
    ({"num_workers": 0}, "num_workers must be >= 1"),
])
def test_bad_hyperparameters_say_what_to_change(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MathVerifier(**kwargs)


def test_length_mismatch_is_an_error(gsm8k_verifier):
    with pytest.raises(ValueError, match="one ground truth per response"):
        gsm8k_verifier(["1", "2"], ["1"])


def test_stats_count_every_check(math_verifier):
    before = math_verifier.stats()
    # boxed 7 vs 7: fast path; unboxed prose: pooled
    responses = ["\\boxed{7}", "first 3, then 7 - 3 = 4", "$x = \\frac{2}{4}$"]
    assert math_verifier(responses, ["7", "4", "\\frac{1}{2}"]) == [1.0, 1.0, 1.0]
    after = math_verifier.stats()
    assert set(after) >= {"checked", "timeouts", "errors"}
    assert after["checked"] - before["checked"] == 3
    assert after["fast_path"] - before["fast_path"] == 1
    assert after["pooled"] - before["pooled"] == 2


def test_ground_truth_validation(math_verifier, choice_verifier, gsm8k_verifier):
    for ok in ["NaN", "\\text{Evelyn}", "\\frac{1}{2}", "(1, 2)", "x^2 + 1", "True"]:
        math_verifier.validate_ground_truth(ok)
    for bad in ["", "\\frac{1}{", "$ $"]:
        with pytest.raises(ValueError):
            math_verifier.validate_ground_truth(bad)
    choice_verifier.validate_ground_truth("C")
    with pytest.raises(ValueError, match="not a single letter"):
        choice_verifier.validate_ground_truth("42")
    gsm8k_verifier.validate_ground_truth("1,200")
    gsm8k_verifier.validate_ground_truth("NaN")
    with pytest.raises(ValueError, match="neither a number nor a word"):
        gsm8k_verifier.validate_ground_truth("\\frac{1}{")


def test_validate_ground_truths_names_source_and_row(math_verifier):
    with pytest.raises(ValueError, match=r"2 of 4 .*data source 'set_b', row 11: ") as info:
        math_verifier.validate_ground_truths(["1", "\\frac{1}{", "2", ""], ["set_a", "set_b", "set_b", "set_c"],
                                             [10, 11, 12, 13])
    assert "\\\\frac{1}{" in str(info.value)


def test_close_and_reuse_and_pickle():
    verifier = MathVerifier(num_workers=1)
    assert verifier(["so $y = \\sqrt{4}$"], ["2"]) == [1.0]
    verifier.close()
    assert verifier(["so $y = \\sqrt{9}$"], ["3"]) == [1.0]  # a new pool starts on demand
    copy = pickle.loads(pickle.dumps(verifier))  # workers do not travel; counters do
    assert copy.stats()["checked"] == 2
    verifier.close()


def test_pool_worker_crash_is_an_error_and_replaced():
    pool = WorkerPool("os:getpid", num_workers=1, timeout=5.0)
    try:
        first = pool.map([()])
        assert first[0][0] == "ok"
        pool._workers[0].process.kill()  # the worker dies between batches
        pool._workers[0].process.wait()  # (kill is asynchronous: let it be dead before the next batch)
        again = pool.map([(), ()])
        assert [status for status, _ in again] == ["ok", "ok"] and again[0][1] != first[0][1]
        assert pool.map([("not", "an int")])[0][0] == "error"  # an exception is an error, not a crash
    finally:
        pool.close()
