"""verl-style parquet adapter, on synthetic files and on every file of the shared bench."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clipo.data import bench_dir, load_parquet


def write_verl_parquet(path, rows: int = 50, drop: tuple[str, ...] = ()) -> None:
    columns = {
        "data_source": [f"toy/{i % 2}" for i in range(rows)],
        "prompt": [[{"role": "user", "content": f"What is {i} + 1?"}] for i in range(rows)],
        "ability": ["math"] * rows,
        "reward_model": [{"ground_truth": str(i + 1), "style": "rule"} for i in range(rows)],
        "extra_info": [{"index": 100 + i, "split": "train"} for i in range(rows)],
    }
    pq.write_table(pa.table({k: v for k, v in columns.items() if k not in drop}), path)


def test_synthetic_file_maps_to_records(tmp_path):
    write_verl_parquet(tmp_path / "toy.parquet", rows=5)
    records = load_parquet(tmp_path / "toy.parquet")
    assert len(records) == 5
    assert records[3] == {
        "messages": [{"role": "user", "content": "What is 3 + 1?"}],
        "ground_truth": "4",
        "data_source": "toy/1",
        "index": 103,
        "split": "train",  # extra_info's fields are columns too
        "ability": "math",  # every other column is kept
        "reward_model": {"ground_truth": "4", "style": "rule"},
        "extra_info": {"index": 103, "split": "train"},
    }


def test_max_rows_first_n_and_seeded_sample(tmp_path):
    write_verl_parquet(tmp_path / "toy.parquet")
    first = load_parquet(tmp_path / "toy.parquet", max_rows=4)
    assert [r["index"] for r in first] == [100, 101, 102, 103]
    sample = [r["index"] for r in load_parquet(tmp_path / "toy.parquet", max_rows=10, sample_seed=1)]
    assert sample == [r["index"] for r in load_parquet(tmp_path / "toy.parquet", max_rows=10, sample_seed=1)]
    assert sample != [r["index"] for r in load_parquet(tmp_path / "toy.parquet", max_rows=10, sample_seed=2)]
    assert len(set(sample)) == 10 and sample == sorted(sample) and sample != list(range(100, 110))


def test_missing_optional_columns_fall_back(tmp_path):
    write_verl_parquet(tmp_path / "bare.parquet", rows=3, drop=("data_source", "extra_info"))
    records = load_parquet(tmp_path / "bare.parquet")
    assert [(r["data_source"], r["index"]) for r in records] == [("bare", 0), ("bare", 1), ("bare", 2)]


def test_missing_file_names_the_path_and_the_env_var(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPO_BENCH_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="nowhere.parquet") as error:
        load_parquet("test/nowhere.parquet")
    assert "CLIPO_BENCH_DIR" in str(error.value) and str(tmp_path) in str(error.value)


def test_missing_column_lists_the_file_columns(tmp_path):
    write_verl_parquet(tmp_path / "toy.parquet", drop=("reward_model",))
    with pytest.raises(ValueError, match=r"none of the answer columns \['solution', 'answer'") as error:
        load_parquet(tmp_path / "toy.parquet")
    assert all(f"'{name}'" in str(error.value) for name in ("prompt", "extra_info", "reward_model"))


def test_trl_layout_file_is_read_with_its_columns(tmp_path):
    prompts = [[{"role": "user", "content": "2+2?"}], [{"role": "user", "content": "3+3?"}]]
    table = pa.table({"prompt": prompts, "solution": ["4", "6"], "difficulty": [1, 2]})
    pq.write_table(table, tmp_path / "trl.parquet")
    records = load_parquet(tmp_path / "trl.parquet")
    assert records[1] == {"messages": prompts[1], "ground_truth": "6", "data_source": "trl", "index": 1,
                          "solution": "6", "difficulty": 2}


def test_relative_path_is_found_in_the_bench_dir(tmp_path, monkeypatch):
    (tmp_path / "test").mkdir()
    write_verl_parquet(tmp_path / "test" / "toy.parquet", rows=2)
    monkeypatch.setenv("CLIPO_BENCH_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path / "test")  # "test/toy.parquet" is not relative to the cwd
    assert bench_dir() == tmp_path
    assert len(load_parquet("test/toy.parquet")) == 2


def test_bench_dir_default_is_beside_the_repo(monkeypatch):
    monkeypatch.delenv("CLIPO_BENCH_DIR", raising=False)
    assert bench_dir().parts[-3:] == ("shared", "data", "clipo-bench")


BENCH_FILES = sorted(bench_dir().glob("*/*.parquet")) if bench_dir().is_dir() else []


@pytest.mark.skipif(not BENCH_FILES, reason=f"clipo-bench data absent at {bench_dir()} (set CLIPO_BENCH_DIR)")
@pytest.mark.parametrize("path", BENCH_FILES, ids=[f"{p.parent.name}/{p.name}" for p in BENCH_FILES])
def test_every_bench_file_loads(path):
    records = load_parquet(path, max_rows=3)
    assert len(records) == 3
    for record in records:
        assert record["messages"][-1]["role"] == "user" and "\\boxed" in record["messages"][-1]["content"]
        assert record["ground_truth"].strip() and record["data_source"]
        assert isinstance(record["index"], int)
