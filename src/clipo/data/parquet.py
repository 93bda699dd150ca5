"""verl-style parquet files as clipo records.

Each row: `prompt` (a list of chat messages), `reward_model` (a struct with
`ground_truth`), `data_source`, `extra_info` (a struct with `index`); other
columns (e.g. `ability`) are ignored. This is the layout of the CLIPO release
and of verl's preprocessed GSM8K / MATH files.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from clipo.data.common import bench_dir, select_rows

REQUIRED_COLUMNS = ("prompt", "reward_model")
OPTIONAL_COLUMNS = ("data_source", "extra_info")


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


def _messages(prompt: object, where: str) -> list[dict]:
    if not isinstance(prompt, list) or not all(isinstance(m, dict) and {"role", "content"} <= m.keys() for m in prompt):
        raise ValueError(f"{where}: 'prompt' must be a list of {{'role', 'content'}} messages, got {prompt!r:.200}")
    if not all(isinstance(m["content"], str) for m in prompt):  # bytes would become the text "b'...'"
        raise ValueError(f"{where}: a 'prompt' message's content is not text, got {prompt!r:.200}; store it as a string")
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in prompt]


def _record(row: dict, row_number: int, file: Path) -> dict:
    where = f"{file} row {row_number}"
    reward_model = row["reward_model"]
    if not isinstance(reward_model, dict) or reward_model.get("ground_truth") is None:
        raise ValueError(f"{where}: 'reward_model' must be a struct with a 'ground_truth', got {reward_model!r:.200}")
    extra_info = row.get("extra_info") or {}
    record = {
        "messages": _messages(row["prompt"], where),
        "ground_truth": str(reward_model["ground_truth"]),
        "data_source": str(row.get("data_source") or file.stem),
        "index": int(extra_info.get("index", row_number)),
    }
    if "split" in extra_info:
        record["split"] = extra_info["split"]
    return record


def load_parquet(path: str | Path, max_rows: int | None = None, sample_seed: int | None = None) -> list[dict]:
    """Records of a verl-style parquet file.

    Args:
        path: the file; a relative path that does not exist is looked up in `bench_dir()`.
        max_rows: keep at most this many rows (None: all).
        sample_seed: None keeps the first `max_rows` rows; an int keeps a seeded
            random sample of them (in file order).
    """
    file = resolve_parquet_path(path)
    parquet = pq.ParquetFile(file)
    names = parquet.schema_arrow.names
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        raise ValueError(
            f"{file} lacks column(s) {missing}; it has {names}. A verl-style file needs 'prompt' (chat messages) and "
            "'reward_model' (a struct with 'ground_truth'); for other layouts use the 'hub' source with a column mapping."
        )
    rows = select_rows(parquet.metadata.num_rows, max_rows, sample_seed)
    columns = [c for c in REQUIRED_COLUMNS + OPTIONAL_COLUMNS if c in names]
    table = pq.read_table(file, columns=columns)
    if len(rows) < table.num_rows:
        table = table.take(rows)
    return [_record(row, i, file) for i, row in zip(rows, table.to_pylist())]
