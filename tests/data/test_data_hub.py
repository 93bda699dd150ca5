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
    with pytest.raises(ValueError, match=r"\['problem'\].*\['question', 'answer'\]"):
        load_hub(str(gsm_like), prompt_column="problem")


def test_pattern_that_does_not_match_names_the_row(gsm_like):
    with pytest.raises(ValueError, match="row 0"):
        load_hub(str(gsm_like), answer_pattern=r"ANSWER: (\d+)")


def test_unloadable_dataset_says_what_to_check(tmp_path):
    with pytest.raises(RuntimeError, match="local path"):
        load_hub(str(tmp_path / "no_such_dataset_dir"))
