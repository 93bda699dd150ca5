"""The arith generator: determinism, correct answers, levels, perturbation twins."""

from __future__ import annotations

import ast
import operator
import re
from collections import Counter

import pytest

from clipo.data.arith import PERTURBATIONS, ArithDataset, generate_problem
from clipo.data.arith_words import NAMES

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def safe_eval(expression: str) -> int:
    """Evaluate integer + - * arithmetic; anything else is rejected (no eval)."""

    def walk(node: ast.AST) -> int:
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        raise ValueError(f"not plain arithmetic: {ast.dump(node)}")

    return walk(ast.parse(expression, mode="eval").body)


def skeleton(question: str) -> str:
    """The question with numbers and names blanked: what a symbolic twin must keep."""
    return re.sub(r"\b(" + "|".join(NAMES) + r")\b", "NAME", re.sub(r"\d+", "#", question))


def test_safe_eval_is_a_real_evaluator():
    assert safe_eval("2 + 3 * 4 - 5") == 9  # 2 + 12 - 5
    with pytest.raises(ValueError):
        safe_eval("__import__('os')")


@pytest.mark.parametrize("level", [0, 1, 2, 3])
@pytest.mark.parametrize("perturbation", PERTURBATIONS)
def test_answer_matches_expression_steps_and_text(level, perturbation):
    for index in range(40):
        check_problem(generate_problem(index, level, perturbation, seed=3))


def check_problem(problem: dict) -> None:
    # naive recomputation from the parts, checking every running total stays >= 1
    total = problem["start"]
    for kind, ops in problem["steps"]:
        total += {"add": ops[0], "sub": -ops[0], "packs": ops[0] * ops[-1]}[kind]
        assert total >= 1
    assert problem["answer"] == total == safe_eval(problem["expression"])
    # the question states exactly the expression's numbers, in order
    assert re.findall(r"\d+", problem["question"]) == re.findall(r"\d+", problem["expression"])


def test_golden_problem_pins_cross_run_determinism():
    # fixed text for (index 0, level 1, seed 0): a change here changes every dataset
    problem = generate_problem(0, 1, "none", seed=0)
    assert problem["question"] == (
        "Emma starts with 7 balloons. Emma finds 8 more balloons. How many balloons does Emma have in the end?"
    )
    assert problem["answer"] == 15


def test_dataset_is_deterministic_by_seed():
    make = lambda seed: ArithDataset(30, (1, 2, 3), PERTURBATIONS, seed=seed).records  # noqa: E731
    assert make(7) == make(7)
    assert [r["messages"] for r in make(7)] != [r["messages"] for r in make(8)]


def test_levels_shape_and_counts():
    dataset = ArithDataset(size=30, levels=(1, 1, 2), perturbations=("none", "p1"))
    assert len(dataset) == 60  # 30 problems x 2 variants
    assert Counter(r["level"] for r in dataset) == {1: 40, 2: 20}  # levels cycle 1, 1, 2
    assert Counter(r["data_source"] for r in dataset) == {
        "arith/level1": 20, "arith/level1/p1": 20, "arith/level2": 10, "arith/level2/p1": 10,
    }  # fmt: skip
    for i in range(30):
        for level in (0, 1, 2, 3):
            problem = generate_problem(i, level)
            assert len(problem["steps"]) == max(level, 1)
            numbers = [int(n) for n in re.findall(r"\d+", problem["expression"])]
            assert (max(numbers) <= 9) if level < 3 else (10 <= problem["start"] <= 40)
        assert generate_problem(i, 0)["question"] == f"What is {generate_problem(i, 0)['expression']}?"


def test_record_schema():
    record = ArithDataset(3, system_prompt="Be brief.", instruction="Box it.")[1]
    assert record["messages"][0] == {"role": "system", "content": "Be brief."}
    assert record["messages"][1]["role"] == "user" and record["messages"][1]["content"].endswith("? Box it.")
    assert record["ground_truth"] == str(safe_eval(record["expression"]))
    assert record["index"] == 1 and isinstance(record["data_source"], str)


@pytest.mark.parametrize("level", [0, 1, 2, 3])
def test_symbolic_twin_keeps_structure_with_new_values(level):
    for i in range(30):
        original, twin = generate_problem(i, level), generate_problem(i, level, "symbolic")
        assert twin["question"] != original["question"]
        assert skeleton(twin["question"]) == skeleton(original["question"])
        assert [k for k, _ in twin["steps"]] == [k for k, _ in original["steps"]]


@pytest.mark.parametrize("level", [0, 1, 2, 3])
def test_p1_p2_add_clauses_that_change_the_answer(level):
    for i in range(30):
        base, p1, p2 = (generate_problem(i, level, p) for p in ("none", "p1", "p2"))
        if level == 0:  # a clause is an added term
            assert p1["expression"].startswith(base["expression"] + " ")
            assert p2["expression"].startswith(p1["expression"] + " ")
        else:  # p1 = base + one sentence before the question; p2 = p1 + one more
            sentences = [re.split(r"(?<=[.?]) ", q["question"]) for q in (base, p1, p2)]
            assert sentences[1][:-2] == sentences[0][:-1] and sentences[1][-1] == sentences[0][-1]
            assert sentences[2][:-2] == sentences[1][:-1] and sentences[2][-1] == sentences[0][-1]
        assert p1["steps"][:-1] == base["steps"] and p2["steps"][:-1] == p1["steps"]
        # each clause moves the total by at least 2 (operands start at 2), and p2's pair never cancels out
        assert abs(p1["answer"] - base["answer"]) >= 2 and abs(p2["answer"] - p1["answer"]) >= 2
        assert p2["answer"] != base["answer"]


def test_bad_arguments_say_what_is_allowed():
    with pytest.raises(ValueError, match="levels"):
        ArithDataset(levels=(4,))
    with pytest.raises(ValueError, match="level"):
        generate_problem(0, level=-1)
    with pytest.raises(ValueError, match="perturbations"):
        ArithDataset(perturbations=("p3",))
    with pytest.raises(ValueError, match="size"):
        ArithDataset(size=0)
