"""The scoring core: set specs, generation settings, batching and order, metrics and robustness by hand."""

from types import SimpleNamespace

import pytest
import torch

from clipo.evaluation.scoring import (
    SetMetrics,
    SetScores,
    answer_extractor,
    eval_sampling,
    robustness_table,
    score_records,
    set_metrics,
    split_set_spec,
)
from clipo.models import build_tiny_tokenizer
from clipo.rollout import generation_config
from clipo.verifiers import GSM8KVerifier, MathVerifier


def test_split_set_spec_separates_evaluation_keys():
    spec = {"source": "parquet", "path": "x.parquet", "max_rows": 8, "verifier": "gsm8k", "twins": ["p1"],
            "hub": {"source": "hub", "name": "openai/gsm8k"}}
    assert split_set_spec(spec) == ({"source": "parquet", "path": "x.parquet", "max_rows": 8}, "gsm8k", ["p1"])
    assert split_set_spec(spec, use_hub=True) == ({"source": "hub", "name": "openai/gsm8k"}, "gsm8k", ["p1"])
    assert split_set_spec({"source": "arith", "size": 4}) == ({"source": "arith", "size": 4}, None, [])
    assert "source" in spec and "verifier" in spec, "the caller's spec must not be modified"


def test_split_set_spec_errors_say_what_to_do():
    with pytest.raises(ValueError, match="needs a 'source'"):
        split_set_spec({"path": "x.parquet"})
    with pytest.raises(ValueError, match="no hub equivalent"):
        split_set_spec({"source": "parquet", "path": "x.parquet", "hub": None}, use_hub=True)


def test_eval_sampling_greedy_or_sampled():
    tokenizer = build_tiny_tokenizer()
    greedy = generation_config(eval_sampling(1, 0.0, 1.0, 16), tokenizer)
    assert greedy.do_sample is False and greedy.max_new_tokens == 16
    assert (greedy.eos_token_id, greedy.pad_token_id) == (tokenizer.eos_token_id, tokenizer.pad_token_id)
    sampled = generation_config(eval_sampling(16, 0.6, 0.95, 32), tokenizer)
    assert sampled.do_sample and sampled.temperature == 0.6 and sampled.top_p == 0.95 and sampled.use_cache
    with pytest.raises(ValueError, match="identical samples"):
        eval_sampling(4, 0.0, 1.0, 16)


def test_answer_extractor_uses_the_verifier_or_the_last_box():
    gsm8k, math = GSM8KVerifier(), MathVerifier()
    assert answer_extractor(gsm8k)("so 3 + 4 = 7 apples.") == "7"  # gsm8k's last-number fallback
    extract = answer_extractor(math)  # no `extract` of its own: last box, else a statement, else last number
    assert extract("first \\boxed{1} then \\boxed{x^{2}+\\dfrac{1}{2}}") == "x^{2}+\\frac{1}{2}"
    assert extract("The answer is 12.") == "12"
    assert extract("we get 3, then 4.0 apples") == "4"
    assert extract("no number here") is None
    # votes compare numbers by value
    assert extract("\\boxed{7.0}") == extract("\\boxed{7}") == extract("\\boxed{\\frac{14}{2}}") == "7"


# Hand-computed reference for 3 problems x 4 samples:
#   A: verdicts [0,1,1,0], answers [3,7,7,4]   B: all wrong, answers [-,5,5,-]   C: all right, answers 9
#   acc    = (2/4 + 0 + 1) / 3 = 1/2
#   pass@2 = A: 1 - C(2,2)/C(4,2) = 1 - 1/6 = 5/6; B: 0; C: 1  -> (5/6 + 1) / 3 = 11/18
#   pass@4 = A: 1 (fewer than 4 wrong); B: 0; C: 1             -> 2/3
#   maj@2  = A: [3,7] tie -> first, 3, wrong; B: 5 wrong; C: 1 -> 1/3
#   maj@4  = A: 7 twice -> right; B: 5 wrong; C: right         -> 2/3
CORRECT = torch.tensor([[0, 1, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
ANSWERS = [["3", "7", "7", "4"], [None, "5", "5", None], ["9"] * 4]


def _scores(correct=CORRECT, answers=ANSWERS) -> SetScores:
    P, n = correct.shape
    return SetScores(correct=correct, answers=answers, responses=[["r"] * n] * P, ground_truths=["g"] * P,
                     indices=list(range(P)), truncated=torch.zeros(P, n, dtype=torch.bool),
                     lengths=torch.full((P, n), 10))


def test_set_metrics_against_hand_computation():
    metrics = set_metrics(_scores(), ks=[2, 4, 8])  # 8 > n = 4 is left out
    expected = {"problems": 3.0, "acc": 1 / 2, "pass@2": 11 / 18, "pass@4": 2 / 3, "maj@2": 1 / 3, "maj@4": 2 / 3,
                "truncated": 0.0, "length": 10.0}
    assert metrics.keys() == expected.keys()
    torch.testing.assert_close(torch.tensor(list(metrics.values())), torch.tensor(list(expected.values())))


def test_streaming_set_metrics_equal_one_shot():
    tracker = SetMetrics(n=4, ks=[2, 4])
    tracker.update(CORRECT[:2], ANSWERS[:2])
    tracker.update(CORRECT[2:], ANSWERS[2:])
    streamed = {k: float(v) for k, v in tracker.compute().items()}
    one_shot = set_metrics(_scores(), ks=[2, 4])
    assert streamed == {k: one_shot[k] for k in streamed}
    tracker.reset()
    tracker.update(CORRECT[2:], ANSWERS[2:])
    assert float(tracker.compute()["acc"]) == 1.0


def test_robustness_table_gaps_and_average():
    per_set = {"a": {"problems": 10.0, "acc": 0.8}, "a_p1": {"problems": 20.0, "acc": 0.6},
               "b": {"problems": 5.0, "acc": 0.5}}
    table = robustness_table(per_set, {"a": ["a_p1", "a_missing"], "b": []})
    # gap 0.8 - 0.6 = 0.2; relative drop 0.2 / 0.8 = 0.25; a twin that was not evaluated has no row
    assert list(table["gaps"]) == [("a", "a_p1")]
    gap = table["gaps"][("a", "a_p1")]
    torch.testing.assert_close(torch.tensor([gap["gap"], gap["relative_drop"]]), torch.tensor([0.2, 0.25]))
    # each set counts once, whatever its size: (0.8 + 0.6 + 0.5) / 3
    assert table["average"].keys() == {"acc"}
    torch.testing.assert_close(table["average"]["acc"], 1.9 / 3)


def _fake_generate(calls):
    """Canned rollouts: sample k of a record answers `ground_truth + k` (so only sample 0 is right)."""

    def generate(records, group_size, sampling, hidden_layer=None):
        calls.append(len(records) * group_size)
        responses = [f"\\boxed{{{int(r['ground_truth']) + k}}}" for r in records for k in range(group_size)]
        return SimpleNamespace(responses=responses, ground_truths=[r["ground_truth"] for r in records
                                                                   for _ in range(group_size)],
                               truncated=torch.zeros(len(responses), dtype=torch.bool),
                               response_lengths=torch.arange(len(responses)))

    return SimpleNamespace(generate=generate)


def test_score_records_batches_whole_groups_and_keeps_record_order():
    calls = []
    engine = _fake_generate(calls)
    # prompts of decreasing length, so batching by length reverses them
    records = [{"messages": [{"role": "user", "content": "x" * (10 - i)}], "ground_truth": str(10 * i), "index": 100 + i}
               for i in range(5)]
    scores = score_records(engine, records, GSM8KVerifier(), sampling=None, n=3, batch_size=7, progress=False)
    assert calls == [6, 6, 3]  # 7 // 3 = 2 problems a call, each with its 3 samples
    assert scores.indices == [100, 101, 102, 103, 104] and scores.ground_truths == [str(10 * i) for i in range(5)]
    assert scores.correct.tolist() == [[True, False, False]] * 5
    assert scores.answers[2] == ["20", "21", "22"]
    with pytest.raises(ValueError, match="batch_size=2 must be >= n=3"):
        score_records(engine, records, GSM8KVerifier(), sampling=None, n=3, batch_size=2, progress=False)
