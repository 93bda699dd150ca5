"""Helpers shared by the data sources: where the benchmark lives, row selection."""

from __future__ import annotations

import os
import random
from pathlib import Path

# src/clipo/data/common.py -> the repository root is three folders up from src/clipo/data
_REPO_ROOT = Path(__file__).resolve().parents[3]
_BENCH_RELATIVE = Path("..") / "shared" / "data" / "clipo-bench"


def bench_dir() -> Path:
    """Folder of the shared clipo-bench parquet files (`train/`, `test/`).

    `CLIPO_BENCH_DIR` wins; otherwise `<repo>/../shared/data/clipo-bench`, or,
    when that is absent (e.g. a non-editable install), the same path relative
    to the current working directory.
    """
    if env := os.environ.get("CLIPO_BENCH_DIR"):
        return Path(env).expanduser()
    beside_repo = (_REPO_ROOT / _BENCH_RELATIVE).resolve()
    if beside_repo.is_dir():
        return beside_repo
    beside_cwd = (Path.cwd() / _BENCH_RELATIVE).resolve()
    return beside_cwd if beside_cwd.is_dir() else beside_repo


def select_rows(num_rows: int, max_rows: int | None, sample_seed: int | None) -> list[int]:
    """Row numbers to keep: all, the first `max_rows`, or a seeded sample of them (in file order)."""
    if max_rows is not None and max_rows < 1:
        raise ValueError(f"max_rows must be >= 1 or None (all rows), got {max_rows}")
    if max_rows is None or max_rows >= num_rows:
        return list(range(num_rows))
    if sample_seed is None:
        return list(range(max_rows))
    return sorted(random.Random(sample_seed).sample(range(num_rows), max_rows))


# TRL's prompt-only datasets name their prompt column `prompt`; math sets use `question` / `problem`
PROMPT_COLUMNS = ("prompt", "question", "problem")
# the column holding the ground truth: TRL's accuracy_reward reads `solution`
ANSWER_COLUMNS = ("solution", "answer", "ground_truth")


def find_column(names: list[str], given: str | None, candidates: tuple[str, ...], what: str, where: str) -> str:
    """`given` when the data has it; None picks the first of `candidates` the data has."""
    if given is not None:
        if given not in names:
            raise ValueError(f"{where} has no {what} column {given!r}; it has {names}. "
                             f"Set {what}_column to one of them.")
        return given
    found = [c for c in candidates if c in names]
    if not found:
        raise ValueError(f"{where} has none of the {what} columns {list(candidates)}; it has {names}. "
                         f"Set {what}_column to the right one.")
    return found[0]


def chat_messages(prompt: object, instruction: str | None, system_prompt: str | None, where: str) -> list[dict]:
    """A prompt string, or a list of chat messages, as the messages the policy sees: `instruction`
    appended to the last message, `system_prompt` put first."""
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, list) and prompt and all(isinstance(m, dict) and {"role", "content"} <= m.keys()
                                                     for m in prompt):
        if not all(isinstance(m["content"], str) for m in prompt):  # bytes would become the text "b'...'"
            raise ValueError(f"{where}: a 'prompt' message's content is not text, got {prompt!r:.200}; store it as a string")
        messages = [{"role": str(m["role"]), "content": str(m["content"])} for m in prompt]
    else:
        raise ValueError(f"{where}: the prompt column must hold a string or chat messages "
                         f"([{{'role': ..., 'content': ...}}, ...]), got {prompt!r:.200}")
    if instruction:
        messages[-1] = {**messages[-1], "content": f"{messages[-1]['content'].rstrip()} {instruction}"}
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return system + messages


def prompt_record(row: dict, prompt_column: str, messages: list[dict], ground_truth: str, data_source: str,
                  index: int) -> dict:
    """A record keeping every column of `row` under its own name but the prompt column, which
    becomes `messages`; a plain-text prompt also stays as `prompt` (its text, instruction
    appended), which makes the record plain text for TRL-style reward functions."""
    record = {k: v for k, v in row.items() if k not in (prompt_column, "prompt")}
    if isinstance(row[prompt_column], str):
        record["prompt"] = messages[-1]["content"]
    return record | {"messages": messages, "ground_truth": ground_truth, "data_source": data_source, "index": index}


def verl_record(row: dict, row_number: int, default_source: str, where: str) -> dict:
    """A verl-layout row (`prompt` messages, `reward_model.ground_truth`, `data_source`,
    `extra_info`) as a record: every column kept, `extra_info`'s fields also spread as columns."""
    reward_model = row.get("reward_model")
    if not isinstance(reward_model, dict) or reward_model.get("ground_truth") is None:
        raise ValueError(f"{where}: 'reward_model' must be a struct with a 'ground_truth', got {reward_model!r:.200}")
    prompt = row.get("prompt")
    if not isinstance(prompt, list):
        raise ValueError(f"{where}: 'prompt' must be a list of {{'role', 'content'}} messages, got {prompt!r:.200}")
    extra_info = row.get("extra_info") or {}
    spread = {k: v for k, v in extra_info.items() if k not in row}
    return prompt_record(row | spread, "prompt", chat_messages(prompt, None, None, where),
                         str(reward_model["ground_truth"]), str(row.get("data_source") or default_source),
                         int(extra_info.get("index", row_number)))
