"""Generator of the `arith` word problems (the dataset is in `clipo.data.arith`).

A problem is a *template* (object, sentence wording, the kinds of its steps)
filled with *values* (two names, a start amount, each step's operands); both
are drawn from `random.Random` streams keyed by `(seed, level, index)`, so
problem `index` is the same on every machine and run. Answers stay >= 1 at
every step (subtractions are bounded by the running total).

Levels: 0 a bare sum or difference of single digits ("What is 7 + 8?"); 1 a
word problem with one add/sub step on single digits; 2 two such steps; 3
three steps on numbers up to 40, one kind being "k packs of n" (`+ k * n`).

Perturbations (GSM-Symbolic, arXiv 2410.05229), the twins of problem `index`:
`none` the original; `symbolic` the same template with new names and numbers;
`p1` the original plus one added clause that changes the computation; `p2`
plus two (the first being p1's), so a robustness gap is `acc(none) - acc(p1)`
over the same indices. At level 0 a clause is an added term and a symbolic
twin has new numbers.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from clipo.data.arith_words import CLAUSES, INTROS, NAMES, OBJECTS, QUESTIONS, STEPS

PERTURBATIONS = ("none", "symbolic", "p1", "p2")
PACKS = (2, 5)  # range of k in a "k packs of n" step; n is a single digit >= 2


@dataclass(frozen=True)
class Level:
    """Shape of one difficulty level: step count, start and operand ranges, step kinds."""

    steps: int
    start: tuple[int, int]
    operand: tuple[int, int]
    kinds: tuple[str, ...]


LEVELS = {
    # operands start at 2 so that no sentence reads "1 more apples"
    0: Level(1, (2, 9), (2, 9), ("add", "sub")),
    1: Level(1, (2, 9), (2, 9), ("add", "sub")),
    2: Level(2, (2, 9), (2, 9), ("add", "sub")),
    3: Level(3, (10, 40), (2, 20), ("add", "sub", "packs")),
}


def _rng(seed: int, level: int, index: int, stream: str) -> random.Random:
    # a str seed is hashed with sha512 by `random`, independent of PYTHONHASHSEED
    return random.Random(f"clipo-arith/{seed}/{level}/{index}/{stream}")


def _delta(kind: str, operands: tuple[int, ...]) -> int:
    if kind == "packs":
        return operands[0] * operands[1]
    return -operands[0] if kind == "sub" else operands[0]


def _term(kind: str, operands: tuple[int, ...]) -> str:
    if kind == "packs":
        return f" + {operands[0]} * {operands[1]}"
    return f" {'-' if kind == 'sub' else '+'} {operands[0]}"


def _operands(rng: random.Random, kind: str, total: int, lo: int, hi: int) -> tuple[int, ...] | None:
    """One step's operands, or None when a subtraction would leave the total below 1."""
    if kind == "packs":
        return (rng.randint(*PACKS), rng.randint(2, 9))
    if kind == "sub":
        return (rng.randint(lo, min(hi, total - 1)),) if total - 1 >= lo else None
    return (rng.randint(lo, hi),)


def _template(rng: random.Random, level: int) -> dict:
    kinds = [rng.choice(LEVELS[level].kinds) for _ in range(LEVELS[level].steps)]
    return {
        "obj": rng.choice(OBJECTS),
        "intro": rng.randrange(len(INTROS)),
        "question": rng.randrange(len(QUESTIONS)),
        "steps": [(kind, rng.randrange(len(STEPS[kind]))) for kind in kinds],
    }


def _values(rng: random.Random, level: int, template: dict) -> dict:
    spec = LEVELS[level]
    while True:  # rejection sampling: redraw until every subtraction is possible
        name, friend = rng.sample(NAMES, 2)
        total = start = rng.randint(*spec.start)
        operands = []
        for kind, _ in template["steps"]:
            if (ops := _operands(rng, kind, total, *spec.operand)) is None:
                break
            operands.append(ops)
            total += _delta(kind, ops)
        else:
            return {"name": name, "friend": friend, "start": start, "operands": operands}


def _shown(values: dict, level: int) -> tuple:
    """What the question text shows of `values` (level 0 shows no names)."""
    numbers = (values["start"], values["operands"])
    return numbers if level == 0 else (*numbers, values["name"], values["friend"])


def _clauses(rng: random.Random, level: int, total: int) -> list[tuple[str, int, tuple[int, ...]]]:
    """The two added clauses of p2 (p1 keeps the first): (kind, wording, operands)."""
    lo, hi = LEVELS[level].operand
    out, base = [], total
    for _ in range(2):
        while True:  # the second clause must not undo the first: p2's answer differs from the original's
            kind = rng.choice(("add", "sub"))
            kind = "add" if kind == "sub" and total - 1 < lo else kind
            ops = _operands(rng, kind, total, lo, hi)
            if total + _delta(kind, ops) != base:
                break
        out.append((kind, rng.randrange(len(CLAUSES[kind])), ops))
        total += _delta(kind, ops)
    return out


def generate_problem(index: int, level: int = 1, perturbation: str = "none", seed: int = 0) -> dict:
    """Problem `index` of `level` in its `perturbation` variant.

    Returns:
        dict with `question` (text), `answer` (int), `expression` (e.g. "3 + 4 - 2"),
        `start`, `steps` (list of `(kind, operands)`), `level`, `perturbation`, `index`.
    """
    if level not in LEVELS:
        raise ValueError(f"arith level must be one of {sorted(LEVELS)}, got {level!r}")
    if perturbation not in PERTURBATIONS:
        raise ValueError(f"arith perturbation must be one of {PERTURBATIONS}, got {perturbation!r}")
    template = _template(_rng(seed, level, index, "template"), level)
    values = _values(_rng(seed, level, index, "values"), level, template)
    if perturbation == "symbolic":
        rng, original = _rng(seed, level, index, "symbolic"), values
        while _shown(values, level) == _shown(original, level):
            values = _values(rng, level, template)
    steps = [(kind, STEPS[kind][i], ops) for (kind, i), ops in zip(template["steps"], values["operands"])]
    if perturbation in ("p1", "p2"):
        total = values["start"] + sum(_delta(kind, ops) for kind, _, ops in steps)
        extra = _clauses(_rng(seed, level, index, "clauses"), level, total)[: int(perturbation[1])]
        steps += [(kind, CLAUSES[kind][i], ops) for kind, i, ops in extra]
    expression = str(values["start"]) + "".join(_term(kind, ops) for kind, _, ops in steps)
    words = {"name": values["name"], "friend": values["friend"], "obj": template["obj"]}
    sentences = [INTROS[template["intro"]].format(n=values["start"], **words)]
    for kind, text, ops in steps:
        sentences.append(text.format(**words, **(dict(k=ops[0], n=ops[1]) if kind == "packs" else dict(n=ops[0]))))
    sentences.append(QUESTIONS[template["question"]].format(**words))
    return {
        "question": f"What is {expression}?" if level == 0 else " ".join(sentences),
        "answer": values["start"] + sum(_delta(kind, ops) for kind, _, ops in steps),
        "expression": expression,
        "start": values["start"],
        "steps": [(kind, ops) for kind, _, ops in steps],
        "level": level,
        "perturbation": perturbation,
        "index": index,
    }
