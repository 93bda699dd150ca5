"""Word lists and sentence templates of the embedded `arith` task.

Placeholders: `{name}` the protagonist, `{friend}` another person, `{obj}` a
plural object, `{n}` an operand, `{k}` a number of packs. A step's *kind* fixes
its computation on the running total: `add` is `+ n`, `sub` is `- n`, `packs`
is `+ k * n`.
"""

NAMES = (
    "Tom", "Anna", "Liam", "Maya", "Noah", "Emma", "Omar", "Sara", "Ben", "Lucy",
    "Ravi", "Mia", "Jack", "Zoe", "Leo", "Nina", "Sam", "Ella", "Max", "Ivy",
)  # fmt: skip

OBJECTS = (
    "apples", "marbles", "stickers", "pencils", "cookies", "books", "cards", "shells",
    "coins", "toy cars", "balloons", "stamps", "beads", "oranges", "crayons",
)  # fmt: skip

INTROS = ("{name} has {n} {obj}.", "{name} starts with {n} {obj}.")

QUESTIONS = ("How many {obj} does {name} have now?", "How many {obj} does {name} have in the end?")

STEPS = {
    "add": (
        "{name} buys {n} more {obj}.",
        "{friend} gives {name} {n} more {obj}.",
        "{name} finds {n} more {obj}.",
    ),
    "sub": (
        "{name} gives {n} {obj} to {friend}.",
        "{name} loses {n} {obj}.",
        "{name} sells {n} {obj}.",
    ),
    "packs": (
        "{name} buys {k} bags with {n} {obj} in each bag.",
        "{friend} gives {name} {k} boxes with {n} {obj} in each box.",
    ),
}

# The added clauses of the p1/p2 variants (GSM-Symbolic P1/P2): relevant extra
# steps that change the computation, worded apart from the base steps.
CLAUSES = {
    "add": (
        "Later, {friend} gives {name} another {n} {obj}.",
        "Then {name} wins {n} {obj} in a game.",
    ),
    "sub": (
        "After that, {name} gives {n} {obj} to {friend}.",
        "Then {name} drops {n} of the {obj} and cannot find them.",
    ),
}
