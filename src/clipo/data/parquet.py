"""Parquet files as clipo records: the verl layout, or TRL's prompt + answer columns.

verl layout: each row has `prompt` (a list of chat messages), `reward_model` (a struct with
`ground_truth`), `data_source` and `extra_info` (a struct with `index`); every other column (e.g.
`ability`) is kept, and `extra_info`'s fields are also columns of their own. This is the layout of
the CLIPO release and of verl's preprocessed GSM8K / MATH files. A file without `reward_model` is
read in TRL's layout: a `prompt` (or `question`, `problem`) column, conversational or plain
text, and the answer column (`solution`, `answer` or `ground_truth`; `answer_column` picks
another), every other column kept.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from clipo.data.common import (
    ANSWER_COLUMNS,
    PROMPT_COLUMNS,
    bench_dir,
    chat_messages,
    find_column,
    prompt_record,
    select_rows,
    verl_record,
)
from clipo.data.file_errors import parquet_problem


def resolve_parquet_path(path: str | Path) -> Path:
    """`path` as given, or, when relative and absent, relative to `bench_dir()`."""
    given = Path(path).expanduser()
    if given.is_file():
        return given
    in_bench = bench_dir() / given
    if not given.is_absolute() and in_bench.is_file():
        return in_bench
    looked = f"{given.resolve()}" + ("" if given.is_absolute() else f" and {in_bench}")
    raise FileNotFoundError(
        f"parquet file not found: {path!r} (looked at {looked}). Pass an existing path, or set CLIPO_BENCH_DIR "
        "to the folder holding the clipo-bench data (with train/ and test/) and give a path inside it, "
        "e.g. 'test/gsm8k.parquet'."
    )


def load_parquet(path: str | Path, max_rows: int | None = None, sample_seed: int | None = None,
                 answer_column: str | None = None) -> list[dict]:
    """Records of a parquet file in verl's or TRL's layout (see the module).

    Args:
        path: the file; a relative path that does not exist is looked up in `bench_dir()`.
        max_rows: keep at most this many rows (None: all).
        sample_seed: None keeps the first `max_rows` rows; an int keeps a seeded random sample of
            them (in file order).
        answer_column: the ground-truth column of a TRL-layout file (None: the first of
            `solution`, `answer`, `ground_truth`).
    """
    file = resolve_parquet_path(path)
    if problem := parquet_problem(file):
        raise ValueError(problem)
    parquet = pq.ParquetFile(file)
    names = parquet.schema_arrow.names
    verl = "reward_model" in names and answer_column is None
    prompt_column = "prompt" if verl else find_column(names, None, PROMPT_COLUMNS, "prompt", str(file))
    try:
        answer = None if verl else find_column(names, answer_column, ANSWER_COLUMNS, "answer", str(file))
    except ValueError as error:
        raise ValueError(f"{error} (a verl-layout file has 'prompt' messages and 'reward_model' with a "
                         "'ground_truth')") from None
    rows = select_rows(parquet.metadata.num_rows, max_rows, sample_seed)
    table = pq.read_table(file)
    if len(rows) < table.num_rows:
        table = table.take(rows)
    records = []
    for i, row in zip(rows, table.to_pylist()):
        where = f"{file} row {i}"
        if verl:
            records.append(verl_record(row, i, file.stem, where))
        else:
            messages = chat_messages(row[prompt_column], None, None, where)
            records.append(prompt_record(row, prompt_column, messages, str(row[answer]), file.stem, i))
    return records
