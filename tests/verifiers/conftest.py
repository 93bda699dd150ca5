"""Shared verifiers for the verifier tests: one worker pool per module, not per test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from clipo.verifiers import ChoiceVerifier, GSM8KVerifier, MathVerifier

REPO = Path(__file__).resolve().parents[2]


def shared_data() -> Path:
    """`shared/data` beside the repository or beside a folder above it (a worktree under `wt/`)."""
    for folder in REPO.parents:
        if (folder / "shared" / "data").is_dir():
            return folder / "shared" / "data"
    return REPO.parent / "shared" / "data"


def bench_dir() -> Path:
    """Where the paper's parquet sets live (`CLIPO_BENCH_DIR`, default `shared_data()/clipo-bench`)."""
    return Path(os.environ.get("CLIPO_BENCH_DIR", shared_data() / "clipo-bench"))


def cases_file() -> Path:
    """math-verify's labelled cases (`CLIPO_VERIFIER_CASES`, default `shared_data()/verifier-cases/...`)."""
    return Path(os.environ.get("CLIPO_VERIFIER_CASES", shared_data() / "verifier-cases" / "math_verify_tests.jsonl"))


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
