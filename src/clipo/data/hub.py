"""Any Hugging Face dataset (hub name or local path) as clipo records, via a column mapping.

    load_hub("openai/gsm8k", config_name="main", split="test", prompt_column="question",
             answer_column="answer", answer_pattern=r"####\\s*(.+)$",
             instruction="Put the final answer in \\\\boxed{}.")
"""

from __future__ import annotations

import re
from pathlib import Path

from clipo.data.common import select_rows

# a local file with one of these suffixes is loaded with the matching `datasets` builder
_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv"}


def _load(name: str, config_name: str | None, split: str, data_files: object):
    import datasets

    local = Path(name).expanduser()
    if data_files is None and local.is_file() and local.suffix in _BUILDERS:
        name, data_files = _BUILDERS[local.suffix], str(local)
    try:
        return datasets.load_dataset(name, config_name, split=split, data_files=data_files)
    except Exception as error:  # noqa: BLE001 - re-raised with what to check
        raise RuntimeError(
            f"could not load dataset {name!r} (config {config_name!r}, split {split!r}, data_files {data_files!r}): "
            f"{error}. Without network (HF_HUB_OFFLINE=1) pass a local path or a dataset already in the HF cache."
        ) from error


def _user_messages(prompt: object, instruction: str | None, where: str) -> list[dict]:
    """A question string, or a list of chat messages, with `instruction` appended to the last message."""
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, list) and all(isinstance(m, dict) and {"role", "content"} <= m.keys() for m in prompt):
        messages = [{"role": str(m["role"]), "content": str(m["content"])} for m in prompt]
    else:
        raise ValueError(f"{where}: the prompt column must hold a string or chat messages, got {prompt!r:.200}")
    if not all(isinstance(m["content"], str) for m in (prompt if isinstance(prompt, list) else [])):
        raise ValueError(f"{where}: a prompt message's content is not text, got {prompt!r:.200}; store it as a string")
    if instruction:
        messages[-1] = {**messages[-1], "content": f"{messages[-1]['content'].rstrip()} {instruction}"}
    return messages


def load_hub(
    name: str,
    prompt_column: str = "question",
    answer_column: str = "answer",
    split: str = "train",
    system_prompt: str | None = None,
    instruction: str | None = None,
    config_name: str | None = None,
    data_files: str | list[str] | None = None,
    answer_pattern: str | None = None,
    data_source: str | None = None,
    max_rows: int | None = None,
    sample_seed: int | None = None,
) -> list[dict]:
    """Records of a Hugging Face dataset split.

    Args:
        name: hub name ("openai/gsm8k"), a local dataset folder, a local
            .parquet/.json/.jsonl/.csv file, or a builder name with `data_files`.
        prompt_column: column with the question (a string) or chat messages.
        answer_column: column with the ground truth.
        split: split to read.
        system_prompt: optional system message put first.
        instruction: optional text appended to the question.
        config_name: the dataset's configuration (e.g. "main" for GSM8K).
        data_files: passed to `datasets.load_dataset`.
        answer_pattern: regex whose first group extracts the ground truth from
            the answer column (e.g. GSM8K's `####\\s*(.+)$`); None keeps it whole.
        data_source: the records' `data_source` (default: `name`).
        max_rows, sample_seed: as in `clipo.data.parquet.load_parquet`.
    """
    dataset = _load(name, config_name, split, data_files)
    missing = [c for c in (prompt_column, answer_column) if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"dataset {name!r} (split {split!r}) has no column(s) {missing}; it has {dataset.column_names}. "
            "Set prompt_column / answer_column to the right ones."
        )
    pattern = re.compile(answer_pattern, re.MULTILINE) if answer_pattern else None
    rows = select_rows(len(dataset), max_rows, sample_seed)
    records = []
    for i in rows:
        row, where = dataset[i], f"dataset {name!r} split {split!r} row {i}"
        answer = "" if row[answer_column] is None else str(row[answer_column])  # null: empty, not "None"
        if pattern is not None and answer:
            if (match := pattern.search(answer)) is None:
                raise ValueError(f"{where}: answer_pattern {answer_pattern!r} does not match {answer!r:.200}")
            answer = match.group(1)
        system = [{"role": "system", "content": system_prompt}] if system_prompt else []
        records.append({
            "messages": system + _user_messages(row[prompt_column], instruction, where),
            "ground_truth": answer.strip(),
            "data_source": data_source or name,
            "index": i,
        })  # fmt: skip
    return records
