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
