"""The paper's benchmark sets: every ground truth, boxed in a short response, verifies; a wrong one does not.

Verifier per file: `choice` for mmlu2k/truthfulqa/commonsense_qa, `gsm8k` for the
GSM8K family (gsm8k, gsm_symbolic, gsm_p1, gsm_p2), `math` otherwise. The default suite
takes the first 150 rows of each file (deterministic); `-m slow` checks every row.
"""

from __future__ import annotations

import pytest

from clipo.verifiers.math_verifier import gold_answer
from clipo.verifiers.numbers import parse_number
from tests.verifiers.conftest import bench_dir

DEFAULT_ROWS = 150
CHOICE_SETS = ("mmlu2k", "truthfulqa", "commonsense_qa")
# Rows whose released reference solution boxes nothing (`\boxed{}`): validation must name them.
KNOWN_BAD_ROWS = {"train/math75": {5341, 5343}}


def verifier_kind(stem: str) -> str:
    if stem in CHOICE_SETS:
        return "choice"
    return "gsm8k" if stem.startswith("gsm") else "math"


def wrong_answer(ground_truth: str, kind: str) -> str:
    """An answer that is clearly not the ground truth."""
    if kind == "choice":
        return "C" if ground_truth.strip() == "B" else "B"
    number = parse_number(gold_answer(ground_truth))
    return str(3 * abs(number.value) + 11) if number is not None else "\\sqrt{7}+98765"  # never equals it


def bench_files() -> list:
    root = bench_dir()
    return sorted(root.glob("*/*.parquet")) if root.is_dir() else []


def check_file(path, limit, verifiers, capsys) -> None:
    pd = pytest.importorskip("pandas")
    frame = pd.read_parquet(path, columns=["data_source", "reward_model"])
    truths = [str(rm["ground_truth"]) for rm in frame["reward_model"]][:limit]
    kind = verifier_kind(path.stem)
    verifier = verifiers[kind]
    problems = verifier._gold_problems(truths)
    bad = {row for row, problem in enumerate(problems) if problem is not None}
    assert bad == {row for row in KNOWN_BAD_ROWS.get(f"{path.parent.name}/{path.stem}", ()) if row < len(truths)}
    truths = [truth for row, truth in enumerate(truths) if row not in bad]
    verifier.validate_ground_truths(truths, list(frame["data_source"][: len(truths)]), list(range(len(truths))))
    shown = [truth if kind == "choice" else gold_answer(truth) for truth in truths]
    right = verifier([f"So the final answer is $\\boxed{{{s}}}$." for s in shown], truths)
    wrong = verifier([f"The answer is \\boxed{{{wrong_answer(t, kind)}}}." for t in truths], truths)
    with capsys.disabled():
        print(f"\n{path.parent.name}/{path.name} [{kind}]: {int(sum(right))}/{len(truths)} correct verified, "
              f"{int(sum(wrong))}/{len(truths)} wrong accepted, {len(bad)} unparsable ground truths rejected")
    assert [s for s, r in zip(shown, right) if r != 1.0] == []
    assert [s for s, w in zip(shown, wrong) if w != 0.0] == []


@pytest.fixture(scope="module")
def verifiers(math_verifier, choice_verifier, gsm8k_verifier):
    return {"math": math_verifier, "choice": choice_verifier, "gsm8k": gsm8k_verifier}


def _params():
    files = bench_files()
    if not files:
        return [pytest.param(None, marks=pytest.mark.skip(
            reason=f"benchmark parquet files not found under {bench_dir()} (set CLIPO_BENCH_DIR)"))]
    return [pytest.param(path, id=f"{path.parent.name}-{path.stem}") for path in files]


@pytest.mark.parametrize("path", _params())
def test_bench_sample(path, verifiers, capsys):
    check_file(path, DEFAULT_ROWS, verifiers, capsys)


@pytest.mark.slow
@pytest.mark.parametrize("path", _params())
def test_bench_every_row(path, verifiers, capsys):
    check_file(path, None, verifiers, capsys)
