"""Any Hugging Face dataset (hub name, local dataset folder, or a .json/.jsonl/.parquet/.csv
file) as clipo records, in TRL's standard prompt-only format or by a column mapping.

    load_hub("trl-lib/DeepMath-103K")                      # `prompt` (messages) and `solution`
    load_hub("openai/gsm8k", config_name="main", split="test", prompt_column="question",
             answer_column="answer", answer_pattern=r"####\\s*(.+)$",
             instruction="Put the final answer in \\\\boxed{}.")

The prompt column (default: the first of `prompt`, `question`, `problem`) holds chat messages or
a string; the answer column (default: the first of `solution`, `answer`, `ground_truth`) becomes
the verifier's `ground_truth`. Every other column, the answer column included, stays in the
record under its own name, so reward functions get it as a keyword (TRL's `solution`). A dataset
in verl's layout (`prompt` and `reward_model`) is read as `clipo.data.parquet` reads it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from clipo.data.common import (
    ANSWER_COLUMNS,
    PROMPT_COLUMNS,
    chat_messages,
    find_column,
    prompt_record,
    select_rows,
    verl_record,
)
from clipo.data.file_errors import FORMATS, local_file_problem, unsupported_format


def _load(name: str, config_name: str | None, split: str, data_files: object):
    import datasets

    local = Path(name).expanduser()
    if data_files is None and local.is_file():  # a local file: its format from its suffix
        if local.suffix not in FORMATS:
            raise ValueError(unsupported_format(local))
        name, data_files = FORMATS[local.suffix], str(local)
    try:
        if (local / "dataset_info.json").is_file() or (local / "dataset_dict.json").is_file():
            saved = datasets.load_from_disk(str(local))  # a folder written by `Dataset.save_to_disk`
            return saved[split] if isinstance(saved, datasets.DatasetDict) else saved
        dataset = datasets.load_dataset(name, config_name, split=split, data_files=data_files)
    except Exception as error:  # noqa: BLE001 - re-raised with what to check
        raise _load_error(name, config_name, split, data_files, local, error) from error
    if len(dataset) == 0:
        raise ValueError(f"dataset {str(local) if local.exists() else name!r} (split {split!r}) holds no records")
    return dataset


def _load_error(name: str, config_name: str | None, split: str, data_files: object, local: Path,
                error: Exception) -> Exception:
    """A failed load said as the local file's own problem (file, line or row, what), or `datasets`' message
    with the network hint only where a dataset could have come from the hub."""
    files = [Path(f) for f in ([data_files] if isinstance(data_files, str) else data_files or [])]
    for file in files if files else [local]:
        if file.is_file() and (problem := local_file_problem(file)):
            return ValueError(problem)
    what = f"could not load dataset {name!r} (config {config_name!r}, split {split!r}, data_files {data_files!r}): {error}"
    if local.exists() or (files and all(f.exists() for f in files)):
        return ValueError(f"{what}; the data is local, so check its format")
    return RuntimeError(f"{what}. Without network (HF_HUB_OFFLINE=1) pass a local path or a dataset already in the "
                        "HF cache.")


def load_hub(
    name: str,
    prompt_column: str | None = None,
    answer_column: str | None = None,
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
        prompt_column: column with the question (a string) or chat messages (None: the first
            of `prompt`, `question`, `problem`).
        answer_column: column with the ground truth (None: the first of `solution`, `answer`,
            `ground_truth`; a verl-layout dataset's `reward_model.ground_truth`).
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
    names, where = dataset.column_names, f"dataset {name!r} (split {split!r})"
    verl = {"prompt", "reward_model"} <= set(names) and prompt_column is None and answer_column is None
    prompt_column = "prompt" if verl else find_column(names, prompt_column, PROMPT_COLUMNS, "prompt", where)
    answer_column = None if verl else find_column(names, answer_column, ANSWER_COLUMNS, "answer", where)
    pattern = re.compile(answer_pattern, re.MULTILINE) if answer_pattern else None
    records = []
    for i in select_rows(len(dataset), max_rows, sample_seed):
        row, at = dataset[i], f"{where} row {i}"
        if verl:
            record = verl_record(row, i, data_source or name, at)
            record["messages"] = chat_messages(record["messages"], instruction, system_prompt, at)
        else:
            messages = chat_messages(row[prompt_column], instruction, system_prompt, at)
            record = prompt_record(row, prompt_column, messages, _answer(row[answer_column], pattern, at),
                                   data_source or name, i)
        records.append(record)
    return records


def _answer(value: Any, pattern: re.Pattern | None, at: str) -> str:
    """The ground truth in an answer cell: `pattern`'s first group when given, stripped; null is empty."""
    answer = "" if value is None else str(value)  # null: empty, not "None"
    if pattern is not None and answer:
        if (match := pattern.search(answer)) is None:
            raise ValueError(f"{at}: answer_pattern {pattern.pattern!r} does not match {answer!r:.200}")
        answer = match.group(1)
    return answer.strip()
