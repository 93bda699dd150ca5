"""Hugging Face dataset adapter, on local files (no hub here)."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clipo.data import load_hub


@pytest.fixture
def gsm_like(tmp_path):
    path = tmp_path / "gsm.parquet"
    pq.write_table(
        pa.table({
            "question": [f"Q{i}: what is {i} + 2?" for i in range(6)],
            "answer": [f"{i} plus 2 is {i + 2}.\n#### {i + 2}" for i in range(6)],
        }),
        path,
    )  # fmt: skip
    return path


def test_column_mapping_system_prompt_instruction_and_pattern(gsm_like):
    records = load_hub(
        str(gsm_like), split="train", system_prompt="Be brief.", instruction="Put it in \\boxed{}.",
        answer_pattern=r"####\s*(.+)$", data_source="gsm_local",
    )  # fmt: skip
    assert len(records) == 6
    assert records[4] == {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Q4: what is 4 + 2? Put it in \\boxed{}."},
        ],
        "ground_truth": "6",
        "data_source": "gsm_local",
        "index": 4,
        "answer": "4 plus 2 is 6.\n#### 6",  # every column but the prompt's stays, under its name
        "prompt": "Q4: what is 4 + 2? Put it in \\boxed{}.",  # plain text: TRL's `prompts` are strings
    }


def test_builder_with_data_files_and_chat_prompts(tmp_path):
    path = tmp_path / "chat.jsonl"
    rows = [{"msgs": [{"role": "user", "content": f"say {i}"}], "gt": i} for i in range(4)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    records = load_hub("json", data_files=str(path), prompt_column="msgs", answer_column="gt", max_rows=2)
    assert [r["messages"] for r in records] == [[{"role": "user", "content": "say 0"}], [{"role": "user", "content": "say 1"}]]
    assert [r["ground_truth"] for r in records] == ["0", "1"]
    assert records[0]["data_source"] == "json"


def test_missing_column_lists_the_columns(gsm_like):
    with pytest.raises(ValueError, match=r"no prompt column 'problem'; it has \['question', 'answer'\]"):
        load_hub(str(gsm_like), prompt_column="problem")


def test_pattern_that_does_not_match_names_the_row(gsm_like):
    with pytest.raises(ValueError, match="row 0"):
        load_hub(str(gsm_like), answer_pattern=r"ANSWER: (\d+)")


def test_unloadable_dataset_says_what_to_check(tmp_path):
    with pytest.raises(RuntimeError, match="local path"):
        load_hub(str(tmp_path / "no_such_dataset_dir"))


def test_trl_conversational_jsonl_keeps_every_column(tmp_path):
    path = tmp_path / "trl.jsonl"
    rows = [{"prompt": [{"role": "user", "content": f"add {i}"}], "solution": f"${i}$", "level": i, "tags": ["a"]}
            for i in range(3)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    records = load_hub(str(path), max_rows=2)  # prompt and answer columns found by name
    assert records[1] == {
        "messages": [{"role": "user", "content": "add 1"}], "ground_truth": "$1$", "data_source": str(path),
        "index": 1, "solution": "$1$", "level": 1, "tags": ["a"],
    }  # fmt: skip


def test_plain_prompt_csv_and_a_saved_dataset_folder(tmp_path):
    import datasets

    (tmp_path / "plain.csv").write_text("prompt,answer,source\nWhat is 2+2?,4,toy\nWhat is 3+3?,6,toy\n")
    records = load_hub(str(tmp_path / "plain.csv"), instruction="Box it.")
    assert records[0]["prompt"] == "What is 2+2? Box it." and records[0]["ground_truth"] == "4"
    assert records[0]["source"] == "toy"
    assert records[0]["messages"] == [{"role": "user", "content": "What is 2+2? Box it."}]
    saved = datasets.Dataset.from_dict({"question": ["q0", "q1"], "solution": ["1", "2"], "id": [7, 8]})
    datasets.DatasetDict({"train": saved}).save_to_disk(str(tmp_path / "saved"))
    records = load_hub(str(tmp_path / "saved"))
    assert [(r["prompt"], r["ground_truth"], r["id"]) for r in records] == [("q0", "1", 7), ("q1", "2", 8)]


def test_verl_layout_through_the_hub_source_keeps_its_columns(tmp_path):
    from tests.data.test_data_parquet import write_verl_parquet

    write_verl_parquet(tmp_path / "verl.parquet", rows=3)
    (record,) = load_hub(str(tmp_path / "verl.parquet"), max_rows=1, instruction="Box it.")
    assert record["messages"] == [{"role": "user", "content": "What is 0 + 1? Box it."}]
    assert (record["ground_truth"], record["data_source"], record["index"]) == ("1", "toy/0", 100)
    assert record["ability"] == "math" and record["split"] == "train" and record["extra_info"]["index"] == 100
