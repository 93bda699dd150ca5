"""Training data is checked before the model loads: every ground truth by the verifier that scores it."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clipo.data import PromptDataModule
from clipo.data.checks import DataError, check_data
from clipo.verifiers import GSM8KVerifier, MathVerifier
from tests.conftest import TINY_OVERRIDES, compose_config


def write_parquet(path, truths, contents=None) -> str:
    contents = contents or [f"What is {i} + 1?" for i in range(len(truths))]
    pq.write_table(pa.table({
        "prompt": [[{"role": "user", "content": c}] for c in contents],
        "reward_model": [{"ground_truth": t} for t in truths],
    }), path)
    return str(path)


def datamodule(train_path, val=None) -> PromptDataModule:
    return PromptDataModule(train={"source": "parquet", "path": train_path}, val=val, prompts_per_step=2)


@pytest.fixture(scope="module")
def math():
    with MathVerifier(num_workers=1) as verifier:
        yield verifier


def test_empty_ground_truth_names_file_record_and_value(tmp_path, math):
    path = write_parquet(tmp_path / "train.parquet", ["1", "2", "", "4", "  ", "6"])
    with pytest.raises(DataError, match=r"data\.train \(.*train\.parquet\): 2 of 6 records .* record 2: ground "
                                        r"truth '': the ground truth is empty; record 4: .*skip_bad_rows=true"):
        check_data(datamodule(path), math, {})


def test_skip_bad_rows_drops_and_counts(tmp_path, math, caplog):
    path = write_parquet(tmp_path / "train.parquet", ["1", "", "3", "\\frac{1}{", "5"])
    data = datamodule(path)
    assert check_data(data, math, {}, skip_bad_rows=True) == {"train": 2}
    assert [r["ground_truth"] for r in data.train_set] == ["1", "3", "5"]
    assert "dropped 2 of 5 records" in caplog.text
    data.setup("fit")  # the checked set is the one training uses: nothing is loaded again
    assert len(data.train_set) == 3


def test_each_validation_set_is_checked_by_its_own_verifier(tmp_path, math):
    train = write_parquet(tmp_path / "train.parquet", ["\\frac{1}{2}", "x^2"])  # fine for the math verifier
    val = write_parquet(tmp_path / "val.parquet", ["7", "x^2"])  # neither number nor word: gsm8k cannot score it
    data = datamodule(train, val={"gsm": {"source": "parquet", "path": val}})
    with GSM8KVerifier() as gsm8k, pytest.raises(DataError, match=r"data\.val\.gsm \(.*val\.parquet\): 1 of 2 .*"
                                                                   r"GSM8KVerifier.*record 1: .*neither a number"):
        check_data(data, math, {"gsm": gsm8k})


def test_null_hub_answer_is_an_error_not_the_text_none(tmp_path, math):
    # before: a null answer became the string "None", and \boxed{None} scored 1.0
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"question": f"q{i}", "answer": a}) + "\n" for i, a in enumerate(["1", None])))
    data = PromptDataModule(train={"source": "hub", "name": str(path)}, prompts_per_step=1)
    with pytest.raises(DataError, match=r"train\.jsonl\): 1 of 2 .*record 1: ground truth '': the ground truth is empty"):
        check_data(data, math, {})


def test_non_text_prompt_and_non_parquet_file_name_the_file(tmp_path, math):
    # before: a binary column became the text "b'\xff\xfe...'"
    path = write_parquet(tmp_path / "binary.parquet", ["1", "2"], contents=[b"\xff\xfe\x00", b"\x00"])
    with pytest.raises(DataError, match=r"data\.train: .*binary\.parquet row 0: a 'prompt' message's content is not text"):
        check_data(datamodule(path), math, {})
    (tmp_path / "notes.parquet").write_text("not a parquet file\n")
    with pytest.raises(DataError, match=r"data\.train: data file .*notes\.parquet is not a readable parquet file"):
        check_data(datamodule(str(tmp_path / "notes.parquet")), math, {})


def test_train_stops_before_the_model_loads(tmp_path, monkeypatch):
    path = write_parquet(tmp_path / "train.parquet", [""] * 4)
    cfg = compose_config([o for o in TINY_OVERRIDES if not o.startswith("data.")] + [
        "data=gsm8k", "data.val=null", f"data.train.path={path}", "data.prompts_per_step=2"], tmp_path / "run")
    monkeypatch.setattr("clipo.run.assembly.build_module", lambda *args: pytest.fail("the model was built"))
    from clipo.train import train

    with pytest.raises(DataError, match="4 of 4 records"):
        train(cfg)


def test_overlong_prompts_are_dropped_and_counted_at_load(tmp_path, caplog):
    # before: a 100k-character prompt reached generation (one tiny-model step took 10 minutes)
    from clipo.data.checks import drop_overlong_prompts, prompt_lengths, prompt_token_limit
    from clipo.models import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()  # one token per character
    path = write_parquet(tmp_path / "train.parquet", ["1", "2", "3"], contents=["short", "x" * 100_000, "also short"])
    data = datamodule(path, val={"v": {"source": "parquet", "path": path}})
    data.setup("fit")
    template = prompt_lengths([{"messages": [{"role": "user", "content": ""}]}], tokenizer)[0]
    assert prompt_lengths(data.train_set, tokenizer) == [template + 5, template + 100_000, template + 10]
    assert drop_overlong_prompts(data, tokenizer, template + 10) == {"train": 1, "val.v": 1}
    assert [r["ground_truth"] for r in data.train_set] == ["1", "3"] and len(data.val_sets["v"]) == 2
    assert "data.train: dropped 1 of 3 prompts longer than data.max_prompt_tokens" in caplog.text
    with pytest.raises(DataError, match="fewer than data.prompts_per_step=2"):
        drop_overlong_prompts(data, tokenizer, template + 5)
    assert prompt_token_limit("auto", 4096, 64) == 4032 and prompt_token_limit(None, 4096, 64) is None
    assert prompt_token_limit(512, 4096, 64) == 512
