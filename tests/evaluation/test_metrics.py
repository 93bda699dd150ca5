"""Metrics against hand computations, brute-force enumeration and streaming/distributed invariants."""

from __future__ import annotations

import itertools
import math
import os
import random
import socket
from fractions import Fraction

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from clipo.evaluation.metrics import (
    MajAtK,
    MeanAtN,
    PassAtK,
    benchmark_average,
    majority_at_k,
    mean_at_n,
    pass_at_k,
    relative_robustness_drop,
    robustness_gap,
)


# ---------------------------------------------------------------- pass@k
@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (5, 2, 2, 0.7),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
        (5, 2, 1, 0.4),  # k=1 is plain accuracy c/n = 2/5
        (4, 1, 2, 0.5),  # 1 - C(3,2)/C(4,2) = 1 - 3/6
        (10, 3, 4, 5 / 6),  # 1 - C(7,4)/C(10,4) = 1 - 35/210
        (3, 1, 3, 1.0),  # n=k: all samples drawn, one is correct
        (3, 0, 3, 0.0),  # n=k, none correct
        (8, 0, 3, 0.0),  # c=0: C(8,3)/C(8,3) = 1, so 1 - 1
        (8, 8, 3, 1.0),  # c=n: C(0,3) = 0
        (6, 4, 3, 1.0),  # n-c = 2 < k = 3: every 3-subset holds a correct sample
    ],
)
def test_pass_at_k_hand_values(n, c, k, expected):
    assert isinstance(pass_at_k(n, c, k), float)
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def _brute_force_pass_at_k(n: int, c: int, k: int) -> float:
    """Fraction of all k-subsets of n samples (the first c correct) that contain a correct one."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


def test_pass_at_k_matches_subset_enumeration_vectorised():
    rng = random.Random(0)
    for _ in range(20):
        k = rng.randint(1, 4)
        ns = [rng.randint(k, 9) for _ in range(6)]
        cs = [rng.randint(0, n) for n in ns]
        got = pass_at_k(torch.tensor(ns), torch.tensor(cs), k)
        expected = torch.tensor([_brute_force_pass_at_k(n, c, k) for n, c in zip(ns, cs)])
        assert got.shape == (6,) and got.dtype == torch.float32
        torch.testing.assert_close(got, expected)


def test_pass_at_k_large_n_matches_exact_binomials():
    # C(1000, 100) overflows float64; the product form must still agree with exact rational arithmetic.
    n, c, k = 1000, 37, 100
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12)


def test_pass_at_k_broadcasts_int_n_over_tensor_c():
    got = pass_at_k(4, torch.tensor([0, 1, 4]), 2)
    torch.testing.assert_close(got, torch.tensor([0.0, 0.5, 1.0]))  # 0; 1 - 3/6; 1


@pytest.mark.parametrize(("n", "c", "k", "match"), [(3, 1, 4, "at least k"), (5, 6, 2, r"\[0, num_samples\]"),
                                                     (5, -1, 2, r"\[0, num_samples\]"), (5, 1, 0, ">= 1")])
def test_pass_at_k_rejects_bad_counts(n, c, k, match):
    with pytest.raises(ValueError, match=match):
        pass_at_k(n, c, k)


# ---------------------------------------------------------------- maj@k and mean@n
def test_majority_tie_goes_to_first_occurrence():
    # "7" and "9" both get 2 votes; "7" appears first, and "7" is wrong, "9" right.
    assert majority_at_k([["7", "9", "9", "7"]], [[False, True, True, False]], k=4) == 0.0
    assert majority_at_k([["9", "7", "7", "9"]], [[True, False, False, True]], k=4) == 1.0


def test_majority_skips_none_and_uses_only_first_k():
    answers = [[None, None, "3", "4", "4"]]
    correct = [[False, False, True, False, False]]
    assert majority_at_k(answers, correct, k=3) == 1.0  # first 3: votes {"3": 1} -> "3", correct
    assert majority_at_k(answers, correct, k=5) == 0.0  # all 5: {"3": 1, "4": 2} -> "4", wrong
    assert majority_at_k([["5", "8", "8"]], [[True, False, False]], k=1) == 1.0  # only "5" votes


def test_majority_all_none_scores_zero_and_mean_over_problems():
    answers = [[None, None], ["2", "2"], ["1", "3"]]
    correct = [[False, False], [True, True], [False, True]]
    # scores: no answer -> 0; "2" -> 1; tie "1"/"3" -> "1" -> 0; mean = 1/3
    assert majority_at_k(answers, correct, k=2) == pytest.approx(1 / 3)
    assert majority_at_k(answers, torch.tensor(correct), k=2) == pytest.approx(1 / 3)


def test_majority_rejects_short_or_misaligned_rows():
    with pytest.raises(ValueError, match="at least k"):
        majority_at_k([["1", "2"]], [[True, False]], k=3)
    with pytest.raises(ValueError, match="pair up"):
        majority_at_k([["1", "2"]], [[True]], k=1)
    with pytest.raises(ValueError, match="problems"):
        majority_at_k([["1"], ["2"]], [[True]], k=1)


def test_mean_at_n_averages_samples_then_problems():
    assert mean_at_n(torch.tensor([[1, 0, 0, 1], [1, 1, 1, 1]])) == pytest.approx(0.75)  # (2/4 + 4/4) / 2
    # Ragged rows: (1/1 + 1/3) / 2 = 2/3, not the pooled 2/4.
    assert mean_at_n([[True], [False, False, True]]) == pytest.approx(2 / 3)


def test_mean_at_n_rejects_non_binary_verdicts():
    with pytest.raises(ValueError, match="0/1"):
        mean_at_n(torch.tensor([[0.5, 1.0]]))
    with pytest.raises(ValueError, match=r"\[P, n\]"):
        mean_at_n(torch.tensor([1.0, 0.0]))


# ---------------------------------------------------------------- torchmetrics classes
def _random_batch(num_problems: int = 12, n: int = 6, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    correct = torch.rand(num_problems, n, generator=gen) < 0.4
    picks = torch.randint(0, 4, (num_problems, n), generator=gen).tolist()
    answers = [[None if p == 0 else str(p) for p in row] for row in picks]
    return answers, correct


def _metrics():
    return {"mean": MeanAtN(), "pass": PassAtK(k=3), "maj": MajAtK(k=4)}


def _update(metrics, answers, correct):
    metrics["mean"].update(correct)
    metrics["pass"].update(correct)
    metrics["maj"].update(answers, correct)


def test_streaming_updates_equal_one_update_and_the_functions():
    answers, correct = _random_batch()
    whole, chunked = _metrics(), _metrics()
    _update(whole, answers, correct)
    for lo, hi in [(0, 5), (5, 6), (6, 12)]:
        _update(chunked, answers[lo:hi], correct[lo:hi])
    expected = {
        "mean": mean_at_n(correct),
        "pass": pass_at_k(torch.full((12,), 6), correct.sum(1), 3).mean().item(),
        "maj": majority_at_k(answers, correct, 4),
    }
    for name, value in expected.items():
        torch.testing.assert_close(whole[name].compute(), torch.tensor(value))
        torch.testing.assert_close(chunked[name].compute(), torch.tensor(value))


def test_merged_rank_states_equal_single_process():
    # merge_state applies each state's dist_reduce_fx, as the DDP sync does.
    answers, correct = _random_batch(seed=1)
    single, rank0, rank1 = _metrics(), _metrics(), _metrics()
    _update(single, answers, correct)
    _update(rank0, answers[:4], correct[:4])
    _update(rank1, answers[4:], correct[4:])
    for name in single:
        rank0[name].merge_state(rank1[name])
        torch.testing.assert_close(rank0[name].compute(), single[name].compute())


def _ddp_worker(rank: int, world_size: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        answers, correct = _random_batch(seed=2)
        metrics = _metrics()
        rows = slice(0, 7) if rank == 0 else slice(7, 12)  # unequal shards
        _update(metrics, answers[rows], correct[rows])
        results[rank] = {name: m.compute().item() for name, m in metrics.items()}
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_sync_over_two_gloo_ranks_equals_single_process():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_ddp_worker, args=(2, port, results), nprocs=2, join=True)
    answers, correct = _random_batch(seed=2)
    single = _metrics()
    _update(single, answers, correct)
    for rank in range(2):
        for name, metric in single.items():
            assert results[rank][name] == pytest.approx(metric.compute().item(), abs=1e-6)


def test_metric_classes_reject_bad_k():
    with pytest.raises(ValueError, match=">= 1"):
        PassAtK(k=0)
    with pytest.raises(ValueError, match=">= 1"):
        MajAtK(k=0)


# ---------------------------------------------------------------- robustness and averages
def test_robustness_gap_sign_and_relative_drop():
    assert robustness_gap(0.8, 0.6) == pytest.approx(0.2)  # lost 0.2 under perturbation: positive
    assert robustness_gap(0.5, 0.6) == pytest.approx(-0.1)  # improved under perturbation: negative
    assert relative_robustness_drop(0.8, 0.6) == pytest.approx(0.25)  # 0.2 / 0.8
    with pytest.raises(ValueError, match="positive original"):
        relative_robustness_drop(0.0, 0.1)
    with pytest.raises(ValueError, match="finite"):
        robustness_gap(float("nan"), 0.1)


def test_benchmark_average_is_unweighted_mean_over_sets():
    assert benchmark_average({"gsm8k": 0.5, "math500": 0.7, "aime24": 0.9}) == pytest.approx(0.7)  # 2.1 / 3
    with pytest.raises(ValueError, match="empty"):
        benchmark_average({})
    with pytest.raises(ValueError, match="aime24"):
        benchmark_average({"gsm8k": 0.5, "aime24": float("nan")})
