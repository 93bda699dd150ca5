"""The embedded `arith` task: generated word problems with known integer answers.

`ArithDataset` turns `clipo.data.arith_generator.generate_problem` into records
of the clipo data schema (`messages`, `ground_truth`, `data_source`, `index`,
plus `level`, `perturbation`, `expression`). Problem `i` has level
`levels[i % len(levels)]` (repeat a level to weight it) and one record per
requested perturbation, all sharing `index = i`, so twins pair up by index.

Tuned for SmolLM2-135M-Instruct sampled at temperature 1.0 (top-k 0, top-p 1),
64 new tokens, scored by the last `\\boxed{}` or else the last number
(`python -m clipo.data.calibrate --levels L --prompts 16 --samples 4`, seed
1000; few samples on a loaded 2-core CPU, so +-10 points; the one-shot and
system-prompt rows came from the same sampling with the message edited):

    level  instruction                                   accuracy  prompts 0<acc<1
    0      "Put the final answer in \\boxed{}."           0.27      0.75
    0      "Answer with just the number."                0.25      0.62
    1      "Put the final answer in \\boxed{}."           0.03      0.13 (8 prompts)
    1      "Answer with just the number."                0.08      0.19
    1      one-shot worked example + boxed instruction   0.06      0.25
    1      system prompt asking for one line             0.08      0.25
    2      "Put the final answer in \\boxed{}."           0.13      0.38 (8 prompts)
    3      "Put the final answer in \\boxed{}."           0.00      0.00 (8 prompts)

Word problems are near the floor for this model whatever the wording, so the
default mixture `levels=(0, 0, 1)` is two bare sums to one word problem
(about 20% expected), with word problems left for the policy to climb to.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch.utils.data import Dataset

from clipo.data.arith_generator import LEVELS, PERTURBATIONS, generate_problem

__all__ = ["ArithDataset", "DEFAULT_INSTRUCTION", "LEVELS", "PERTURBATIONS", "generate_problem", "arith_record"]

DEFAULT_INSTRUCTION = "Put the final answer in \\boxed{}."


def arith_record(
    problem: dict, instruction: str = DEFAULT_INSTRUCTION, system_prompt: str | None = None
) -> dict:
    """The schema record of one generated problem (the user message is question + instruction)."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    content = f"{problem['question']} {instruction}".strip()
    suffix = "" if problem["perturbation"] == "none" else f"/{problem['perturbation']}"
    return {
        "messages": [*messages, {"role": "user", "content": content}],
        "ground_truth": str(problem["answer"]),
        "data_source": f"arith/level{problem['level']}{suffix}",
        "index": problem["index"],
        "level": problem["level"],
        "perturbation": problem["perturbation"],
        "expression": problem["expression"],
    }


class ArithDataset(Dataset):
    """`size` generated problems, each in every variant of `perturbations`.

    Args:
        size: number of problems (records = `size * len(perturbations)`).
        levels: difficulty levels cycled over problems; repeat one to weight it.
        perturbations: variants per problem, from `PERTURBATIONS`.
        seed: generator seed; use another seed for a validation set that shares
            no problem with training.
        instruction: appended to each question (tuned for SmolLM2-135M-Instruct).
        system_prompt: optional system message (None: the chat template's default).
    """

    def __init__(
        self,
        size: int = 2000,
        levels: Sequence[int] = (0, 0, 1),
        perturbations: Sequence[str] = ("none",),
        seed: int = 0,
        instruction: str = DEFAULT_INSTRUCTION,
        system_prompt: str | None = None,
    ) -> None:
        if size < 1:
            raise ValueError(f"arith size must be >= 1, got {size}")
        if not levels or any(level not in LEVELS for level in levels):
            raise ValueError(f"arith levels must be a non-empty list from {sorted(LEVELS)}, got {list(levels)}")
        if not perturbations or any(p not in PERTURBATIONS for p in perturbations):
            raise ValueError(f"arith perturbations must be a non-empty list from {PERTURBATIONS}, got {perturbations}")
        self.records = [
            arith_record(generate_problem(i, levels[i % len(levels)], p, seed), instruction, system_prompt)
            for i in range(size)
            for p in perturbations
        ]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        return self.records[i]
