"""Shared verifiers for the verifier tests: one worker pool per module, not per test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from clipo.verifiers import ChoiceVerifier, GSM8KVerifier, MathVerifier

REPO = Path(__file__).resolve().parents[2]


def bench_dir() -> Path:
    """Where the paper's parquet sets live (`CLIPO_BENCH_DIR`, default `<repo>/../shared/data/clipo-bench`)."""
    return Path(os.environ.get("CLIPO_BENCH_DIR", REPO.parent / "shared" / "data" / "clipo-bench"))


def cases_file() -> Path:
    """math-verify's labelled cases (`CLIPO_VERIFIER_CASES`, default `<repo>/../shared/data/verifier-cases/...`)."""
    default = REPO.parent / "shared" / "data" / "verifier-cases" / "math_verify_tests.jsonl"
    return Path(os.environ.get("CLIPO_VERIFIER_CASES", default))


@pytest.fixture(scope="module")
def math_verifier():
    with MathVerifier(timeout=5.0, num_workers=2) as verifier:
        yield verifier


@pytest.fixture(scope="module")
def choice_verifier():
    with ChoiceVerifier() as verifier:
        yield verifier


@pytest.fixture(scope="module")
def gsm8k_verifier():
    with GSM8KVerifier() as verifier:
        yield verifier
