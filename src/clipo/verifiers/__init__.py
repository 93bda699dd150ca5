"""Verifiers (`verifier=` config group): `math`, `choice`, `gsm8k`.

`verifier(responses, ground_truths) -> list[float]` scores a batch (1.0 correct, 0.0
not). Cheap checks run in the caller's process; symbolic checks run in a pool of
spawned worker processes under a hard per-check time limit (see `pool.py`).
"""

from clipo.verifiers.base import Verifier
from clipo.verifiers.choice import ChoiceVerifier
from clipo.verifiers.gsm8k import GSM8KVerifier
from clipo.verifiers.math_verifier import MathVerifier

__all__ = ["ChoiceVerifier", "GSM8KVerifier", "MathVerifier", "Verifier"]
