"""What is wrong with a local data file, said as the file, the line or row, and the problem.

`datasets` reports a broken JSON line as a character position in an Arrow block, an empty file as
nothing at all, a CSV with only its header as `Instruction "train" corresponds to no data!`; these
re-read the file the simple way to say where and what (called after `datasets` failed, so a good
file is read once).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

# local files clipo reads (by suffix), with the `datasets` builder for each
FORMATS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv"}


def unsupported_format(path: Path) -> str:
    return (f"data file {path}: {path.suffix or 'a file without a suffix'} is not a format clipo reads; store the "
            f"records as {', '.join(FORMATS)} (one record per line or row, with a prompt and an answer column)")


def _excerpt(text: str, width: int = 80) -> str:
    text = text.strip()
    return repr(text if len(text) <= width else text[:width] + "...")


def _jsonl_problem(path: Path) -> str | None:
    records = 0
    with open(path, encoding="utf-8", errors="replace") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as error:
                return (f"data file {path} line {number}: not a JSON record ({error.msg} at column {error.colno}): "
                        f"{_excerpt(line)}")
            if not isinstance(record, dict):
                return f"data file {path} line {number}: a JSON {type(record).__name__}, not a record (an object)"
            records += 1
    return None if records else f"data file {path} holds no records (one JSON object per line)"


def _json_problem(path: Path) -> str | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except json.JSONDecodeError as error:
        if error.msg == "Extra data":  # JSON lines in a .json file, which datasets reads too
            return _jsonl_problem(path)
        return f"data file {path} line {error.lineno} column {error.colno}: not valid JSON ({error.msg})"
    rows = data if isinstance(data, list) else None
    if rows is None:
        return None  # a column-oriented or nested layout: datasets' own message stands
    for number, row in enumerate(rows):
        if not isinstance(row, dict):
            return f"data file {path} record {number}: a JSON {type(row).__name__}, not a record (an object)"
    return None if rows else f"data file {path} holds no records (an empty JSON list)"


def _csv_problem(path: Path) -> str | None:
    with open(path, newline="", encoding="utf-8", errors="replace") as file:
        rows = csv.reader(file)
        header = next(rows, None)
        if not header:
            return None  # empty: said for every format below
        count = 0
        for number, row in enumerate(rows, start=2):
            if row and len(row) != len(header):
                return (f"data file {path} line {number}: {len(row)} fields where the header ({', '.join(header)}) "
                        f"has {len(header)}")
            count += bool(row)
    return None if count else f"data file {path} has a header ({', '.join(header)}) but no rows"


def parquet_problem(path: Path) -> str | None:
    import pyarrow.parquet as pq

    try:
        rows = pq.ParquetFile(path).metadata.num_rows
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same message
        return f"data file {path} is not a readable parquet file ({type(error).__name__}: {error})"
    return None if rows else f"data file {path} has no rows"


def local_file_problem(path: Path) -> str | None:
    """What is wrong with the local data file `path` (empty, a broken line or record, a header without rows, an
    unreadable parquet file), naming the line or row; None when nothing is found."""
    if path.stat().st_size == 0:
        return f"data file {path} is empty (0 bytes): it holds no records"
    checks = {".jsonl": _jsonl_problem, ".json": _json_problem, ".csv": _csv_problem, ".parquet": parquet_problem}
    check = checks.get(path.suffix)
    return check(path) if check is not None else unsupported_format(path)
