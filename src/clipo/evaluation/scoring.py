"""Scoring core shared by `evaluate.py` and the training module's validation.

Shapes: `P` problems, `n` samples per problem. One problem's `n` samples come from one
`generate` call (the prompt repeated `n` times), so they share the prompt's padding.

A set spec (a `configs/benchmark/*.yaml` file, or a `data.val` entry) is a dict whose
keys `verifier`, `twins` and `hub` are evaluation keys; every other key is a
`clipo.data.build_dataset` keyword argument (see `split_set_spec`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from clipo.evaluation.metrics import (
    MajAtK,
    MeanAtN,
    PassAtK,
    benchmark_average,
    relative_robustness_drop,
    robustness_gap,
)
from clipo.interfaces import RolloutEngine
from clipo.rollout.sampling import Sampling
from clipo.verifiers.numbers import last_number, parse_number
from clipo.verifiers.text import answer_statement, clean_response, last_boxed, normalize_answer

EVAL_KEYS = ("verifier", "twins", "hub")


def split_set_spec(spec: Mapping, use_hub: bool = False) -> tuple[dict, str | None, list[str]]:
    """(dataset kwargs, verifier name or None when the spec names none, twin set names) of a set spec.

    Args:
        spec: e.g. `{"source": "parquet", "path": ".../gsm8k.parquet", "verifier": "gsm8k",
            "twins": ["gsm_p1"], "hub": {"source": "hub", "name": "openai/gsm8k", ...}}`.
        use_hub: build from the spec's `hub` kwargs instead (the Hugging Face equivalent).
    """
    spec = dict(spec)
    if "source" not in spec:
        raise ValueError(f"a set spec needs a 'source' (arith, parquet or hub), got keys {sorted(spec)}")
    verifier, twins, hub = spec.pop("verifier", None), spec.pop("twins", None), spec.pop("hub", None)
    if use_hub:
        if not hub:
            raise ValueError(f"set {spec.get('path', spec['source'])!r} has no hub equivalent; "
                             "evaluate it from its parquet file (hub=false)")
        spec = dict(hub)
    return spec, None if verifier is None else str(verifier), [str(t) for t in twins or []]


def eval_sampling(n: int, temperature: float, top_p: float, max_new_tokens: int, prefix: str = "") -> Sampling:
    """Greedy decoding for `temperature == 0` (then `n` must be 1), sampling otherwise (no top-k). Errors name
    each setting as `<prefix><name>` (`validation.` in training)."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"{prefix}n={n} (samples per problem) must be >= 1")
    if problems := Sampling.problems(max_new_tokens, temperature, top_p, 0, prefix):
        raise ValueError("; ".join(problems))
    if temperature == 0 and n > 1:
        raise ValueError(f"greedy decoding ({prefix}temperature=0) gives {n} identical samples; set {prefix}temperature "
                         "> 0 for n > 1 (the paper's Track II: n=16 temperature=0.6 top_p=0.95)")
    return Sampling(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=0)


def boxed_or_stated_answer(response: str) -> str | None:
    """A response's final answer: the last `\\boxed{}`, else an explicit statement, else its last number."""
    text = clean_response(response)
    if (boxed := last_boxed(text)) is not None:
        return boxed
    if (statement := answer_statement(text)) is not None:
        return statement
    number = last_number(text)
    return None if number is None else str(number.value)


def canonical_answer(answer: str | None) -> str | None:
    """A vote key: numbers by value ("7.0", "7" and "14/2" agree), other answers as normalised strings."""
    if answer is None:
        return None
    number = parse_number(answer)
    return str(number.value) if number is not None else normalize_answer(answer) or None


def answer_extractor(verifier: object) -> Callable[[str], str | None]:
    """Canonical final answer of a response for maj@k votes: the verifier's `extract` when it has one."""
    extract = getattr(verifier, "extract", boxed_or_stated_answer)
    return lambda response: canonical_answer(extract(response))


@dataclass
class SetScores:
    """Per-problem results of one set: `n` samples each (rows in record order)."""

    correct: torch.Tensor  # [P, n] bool, the verifier's verdicts
    answers: list[list[str | None]]  # P x n normalised final answers (None: none found)
    responses: list[list[str]]  # P x n decoded responses
    ground_truths: list[str]  # P
    indices: list[int]  # P record `index` (row of the source file)
    truncated: torch.Tensor  # [P, n] bool, no EOS within max_new_tokens
    lengths: torch.Tensor  # [P, n] response tokens

    @staticmethod
    def concat(parts: Sequence[SetScores]) -> SetScores:
        if not parts:
            raise ValueError("no scores to concatenate: the set has no records")
        return SetScores(
            correct=torch.cat([p.correct for p in parts]), answers=[a for p in parts for a in p.answers],
            responses=[r for p in parts for r in p.responses], ground_truths=[g for p in parts for g in p.ground_truths],
            indices=[i for p in parts for i in p.indices], truncated=torch.cat([p.truncated for p in parts]),
            lengths=torch.cat([p.lengths for p in parts]),
        )  # fmt: skip


def score_batch(engine: RolloutEngine, records: list[dict], verifier, extract: Callable[[str], str | None],
                sampling: Sampling, n: int) -> SetScores:
    """Generate `n` samples for each of the records in one engine call, verify and extract answers."""
    rollouts = engine.generate(records, n, sampling)
    verdicts = torch.tensor(verifier(rollouts.responses, rollouts.ground_truths)) > 0.5  # [P*n]
    answers = [extract(r) for r in rollouts.responses]
    rows = range(0, len(rollouts.responses), n)
    return SetScores(
        correct=verdicts.view(-1, n), answers=[answers[i : i + n] for i in rows],
        responses=[rollouts.responses[i : i + n] for i in rows], ground_truths=[r["ground_truth"] for r in records],
        indices=[int(r.get("index", k)) for k, r in enumerate(records)], truncated=rollouts.truncated.cpu().view(-1, n),
        lengths=rollouts.response_lengths.cpu().view(-1, n),
    )  # fmt: skip


def score_records(engine: RolloutEngine, records: Sequence[dict], verifier, sampling: Sampling, n: int,
                  batch_size: int, desc: str | None = None, progress: bool = True) -> SetScores:
    """Score every record with `n` samples; `batch_size` responses (>= n) per engine call.

    Prompts are batched by length (less padding) and the results put back in record order.
    """
    if batch_size < n:
        raise ValueError(f"batch_size={batch_size} must be >= n={n}: a problem's samples share one generate call")
    records = list(records)
    order = sorted(range(len(records)), key=lambda i: sum(len(m["content"]) for m in records[i]["messages"]))
    per_call = batch_size // n
    batches = [order[s : s + per_call] for s in range(0, len(order), per_call)]
    extract, parts = answer_extractor(verifier), []
    for batch in tqdm(batches, desc=desc, unit="batch", disable=not progress):
        parts.append(score_batch(engine, [records[i] for i in batch], verifier, extract, sampling, n))
    scores = SetScores.concat(parts)
    back = sorted(range(len(order)), key=lambda k: order[k])  # position of record i in `order`
    return SetScores(
        correct=scores.correct[back], answers=[scores.answers[k] for k in back],
        responses=[scores.responses[k] for k in back], ground_truths=[scores.ground_truths[k] for k in back],
        indices=[scores.indices[k] for k in back], truncated=scores.truncated[back], lengths=scores.lengths[back],
    )  # fmt: skip


class SetMetrics(torch.nn.Module):
    """Streaming metrics of one set: `acc` (mean@n), `pass@k` and `maj@k` for each k <= n.

    A Module of torchmetrics, so Lightning moves it to the device and syncs it across ranks.
    """

    def __init__(self, n: int, ks: Iterable[int] = ()) -> None:
        super().__init__()
        self.ks = sorted({int(k) for k in ks if int(k) <= n})
        self.acc = MeanAtN()
        self.pass_at = torch.nn.ModuleDict({str(k): PassAtK(k) for k in self.ks})
        self.maj_at = torch.nn.ModuleDict({str(k): MajAtK(k) for k in self.ks})

    def update(self, correct: torch.Tensor, answers: Sequence[Sequence[str | None]]) -> None:
        self.acc.update(correct)
        for k in self.ks:
            self.pass_at[str(k)].update(correct)
            self.maj_at[str(k)].update(answers, correct)

    def compute(self) -> dict[str, torch.Tensor]:
        values = {"acc": self.acc.compute()}
        values |= {f"pass@{k}": self.pass_at[str(k)].compute() for k in self.ks}
        return values | {f"maj@{k}": self.maj_at[str(k)].compute() for k in self.ks}

    def reset(self) -> None:
        for metric in [self.acc, *self.pass_at.values(), *self.maj_at.values()]:
            metric.reset()


def set_metrics(scores: SetScores, ks: Iterable[int] = ()) -> dict[str, float]:
    """`acc`, `pass@k`, `maj@k` (k <= n) of a scored set, plus `problems`, `truncated`, `length`."""
    tracker = SetMetrics(scores.correct.shape[1], ks)
    tracker.update(scores.correct, scores.answers)
    values = {name: float(v) for name, v in tracker.compute().items()}
    extra = {"truncated": float(scores.truncated.float().mean()), "length": float(scores.lengths.float().mean())}
    return {"problems": float(len(scores.ground_truths)), **values, **extra}


def robustness_table(per_set_metrics: Mapping[str, Mapping[str, float]], twins: Mapping[str, Sequence[str]],
                     metric: str = "acc") -> dict[str, dict]:
    """Robustness gaps between each set and its evaluated twins, and the average over sets.

    Returns:
        `{"metric": metric, "gaps": {(set, twin): {"original", "perturbed", "gap", "relative_drop"}},
        "average": {column: value}}`;
        a gap is `metric(set) - metric(twin)` (positive: worse on the twin); the average of each
        metric is unweighted over sets (each set counts once), as the paper reports.
    """
    gaps = {}
    for name, names in twins.items():
        for twin in names:
            if name not in per_set_metrics or twin not in per_set_metrics:
                continue  # a twin that was not evaluated has no gap
            original, perturbed = per_set_metrics[name][metric], per_set_metrics[twin][metric]
            drop = relative_robustness_drop(original, perturbed) if original > 0 else math.nan
            gaps[(name, twin)] = {"original": original, "perturbed": perturbed,
                                  "gap": robustness_gap(original, perturbed), "relative_drop": drop}
    shared = set.intersection(*(set(m) for m in per_set_metrics.values())) if per_set_metrics else set()
    average = {key: benchmark_average({s: m[key] for s, m in per_set_metrics.items()})
               for key in next(iter(per_set_metrics.values()), {}) if key in shared and key != "problems"}
    return {"metric": metric, "gaps": gaps, "average": average}
