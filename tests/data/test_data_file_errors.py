"""A broken local data file is named with its line or row and what is wrong, and no network hint: before,
`datasets` said "...: . Without network..." for an empty file, a character position for a broken JSON line,
"corresponds to no data!" for a CSV with only its header, and "Couldn't find any data file" for a .txt file
that exists."""

from __future__ import annotations

import pytest

from clipo.data import load_hub, load_parquet
from clipo.data.checks import DataError, load_set

GOOD = '{"question": "1+1", "answer": "2"}\n'


@pytest.mark.parametrize("name, text, message", [
    ("empty.jsonl", "", r"empty.jsonl is empty \(0 bytes\): it holds no records"),
    ("blank.jsonl", "\n\n", r"blank.jsonl holds no records \(one JSON object per line\)"),
    ("broken.jsonl", GOOD + '{"question": "2+2", "answer": 4\n' + GOOD,
     r"broken.jsonl line 2: not a JSON record \(Expecting ',' delimiter at column 32\): '\{\"question\": \"2\+2\""),
    ("list.jsonl", GOOD + "[1, 2]\n", r"list.jsonl line 2: a JSON list, not a record"),
    ("broken.json", '[{"question": "1+1", "answer": "2"},\n {"question": 3', r"broken.json line 2 column 16: not valid JSON"),
    ("lines.json", GOOD + "{oops}\n", r"lines.json line 2: not a JSON record"),  # JSON lines in a .json file
    ("header.csv", "question,answer\n", r"header.csv has a header \(question, answer\) but no rows"),
    ("ragged.csv", "question,answer\n1+1,2\n2+2,4,extra\n", r"ragged.csv line 3: 3 fields where the header"),
    ("notes.txt", "what is 1+1\n", r"notes.txt: .txt is not a format clipo reads; store the records as .parquet, "
                                     r".json, .jsonl, .csv"),
    ("bad.parquet", "not parquet", r"bad.parquet is not a readable parquet file \(ArrowInvalid"),
])
def test_a_broken_local_file_names_the_file_the_line_and_the_problem(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as error:
        load_hub(str(path))
    assert "network" not in str(error.value) and str(path) in str(error.value)
    with pytest.raises(DataError, match=rf"^data\.train: data file .*{message}"):  # as a run says it, exit code 2
        load_set("train", {"source": "hub", "name": str(path)})


def test_a_parquet_source_says_the_same_and_a_good_file_still_loads(tmp_path):
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(ValueError, match=r"bad.parquet is not a readable parquet file"):
        load_parquet(str(tmp_path / "bad.parquet"))
    (tmp_path / "good.jsonl").write_text(GOOD * 3)
    assert [r["ground_truth"] for r in load_hub(str(tmp_path / "good.jsonl"))] == ["2"] * 3


def test_a_hub_name_that_is_not_local_keeps_the_network_hint(tmp_path):
    with pytest.raises(RuntimeError, match="Without network"):
        load_hub(str(tmp_path / "no_such_dataset_dir"))
