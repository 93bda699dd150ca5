"""Evaluation metrics: mean@n accuracy, unbiased pass@k, maj@k, robustness gap, benchmark average.

Shapes: `P` problems in a batch, `n` sampled responses per problem. `correct` is the
verifier's verdict per sample, a bool/0-1 tensor [P, n] or a list of per-problem lists
(rows may differ in length, e.g. when some generations failed). The torchmetrics classes
keep only summed states (`dist_reduce_fx="sum"`), so under DDP every rank scores its own
problems and `compute()` returns the mean over all problems of all ranks.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence

import torch
from torchmetrics import Metric

Correct = torch.Tensor | Sequence[Sequence[bool]]


def _check_k(k: int) -> None:
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")


def _sample_counts(correct: Correct) -> tuple[torch.Tensor, torch.Tensor]:
    """(num_samples[P], num_correct[P]) as float64 from a [P, n] tensor or ragged lists of verdicts."""
    if torch.is_tensor(correct):
        if correct.dim() != 2:
            raise ValueError(f"correct must be [P, n] (problems x samples), got shape {tuple(correct.shape)}")
        verdicts = correct.double()
        num_correct = verdicts.sum(dim=1)
        num_samples = torch.full_like(num_correct, correct.shape[1])
    else:
        rows = [torch.as_tensor(row, dtype=torch.float64).reshape(-1) for row in correct]
        verdicts = torch.cat(rows) if rows else torch.zeros(0, dtype=torch.float64)
        num_correct = torch.stack([row.sum() for row in rows]) if rows else verdicts
        num_samples = torch.tensor([float(row.numel()) for row in rows], dtype=torch.float64)
    if not ((verdicts == 0) | (verdicts == 1)).all():
        raise ValueError("correct must hold booleans or 0/1; threshold rewards first, e.g. `rewards > 0.5`")
    if (num_samples == 0).any():
        raise ValueError("every problem needs at least one sample; drop problems with no responses")
    return num_samples, num_correct


def pass_at_k(num_samples: int | torch.Tensor, num_correct: int | torch.Tensor, k: int) -> float | torch.Tensor:
    """Unbiased pass@k: the chance that at least one of k samples drawn without replacement is correct.

    Chen et al. 2021, https://arxiv.org/abs/2107.03374 (Sec. 2.1): `1 - C(n-c, k) / C(n, k)`,
    evaluated as `1 - prod_{i=n-c+1}^{n} (1 - k/i)` so no huge binomials are formed.

    Args:
        num_samples: n, samples drawn per problem; an int or an integer tensor [P].
        num_correct: c, correct samples per problem, 0 <= c <= n; an int or a tensor [P].
        k: samples the estimate is for, 1 <= k <= n.

    Returns:
        A float when both counts are ints, else a float32 tensor [P] (one estimate per problem).
    """
    scalar = not torch.is_tensor(num_samples) and not torch.is_tensor(num_correct)
    n, c = torch.as_tensor(num_samples), torch.as_tensor(num_correct)
    n, c = torch.broadcast_tensors(n.double(), c.double().to(n.device))
    shape = n.shape
    n, c = n.reshape(-1), c.reshape(-1)
    _check_k(k)
    if (k > n).any():
        raise ValueError(f"pass@{k} needs at least k samples per problem, got n = {int(n.min())}"
                         "; lower k or sample more")
    if ((c < 0) | (c > n)).any():
        raise ValueError("num_correct must lie in [0, num_samples] for every problem")
    steps = torch.arange(int(c.max()) if c.numel() else 0, dtype=torch.float64, device=n.device)  # [J]
    i = (n - c + 1).unsqueeze(1) + steps  # [P, J]: i = n-c+1 .. n where step < c
    terms = torch.where(steps < c.unsqueeze(1), 1.0 - k / i, torch.ones_like(i))
    estimate = torch.where(n - c < k, torch.ones_like(n), 1.0 - terms.prod(dim=1))  # fewer than k wrong: certain hit
    return float(estimate[0]) if scalar else estimate.float().reshape(shape)


def _majority_is_correct(answers: Sequence[str | None], correct: Sequence[bool], k: int) -> bool:
    """Whether the most frequent non-None answer among the first k samples is correct (see `majority_at_k`)."""
    if len(answers) != len(correct):
        raise ValueError(f"a problem has {len(answers)} answers but {len(correct)} verdicts; they must pair up")
    if k > len(answers):
        raise ValueError(f"maj@{k} needs at least k samples per problem, got {len(answers)}; lower k or sample more")
    votes = Counter(a for a in answers[:k] if a is not None)  # insertion order = first occurrence
    if not votes:
        return False  # no sample gave an answer: counted as wrong
    winner = max(votes, key=votes.__getitem__)  # max keeps the first of equal counts
    return bool(correct[list(answers[:k]).index(winner)])


def _majority_scores(answers: Sequence[Sequence[str | None]], correct: Correct, k: int) -> torch.Tensor:
    """Per-problem maj@k as float64 [P]."""
    _check_k(k)
    correct = correct.tolist() if torch.is_tensor(correct) else correct
    if len(answers) != len(correct):
        raise ValueError(f"got answers for {len(answers)} problems but verdicts for {len(correct)}")
    return torch.tensor([float(_majority_is_correct(a, c, k)) for a, c in zip(answers, correct)], dtype=torch.float64)


def majority_at_k(answers: Sequence[Sequence[str | None]], correct: Correct, k: int) -> float:
    """maj@k: accuracy of the majority vote over each problem's first k samples, averaged over problems.

    The vote counts normalised final answers, skipping None (no answer); a tie goes to the
    answer that occurs first among the k samples. The problem scores as that first sample's
    verdict (equal answers normally share one verdict). A problem with no answer scores 0.

    Args:
        answers: per problem, n normalised final answers (None where no answer was extracted).
        correct: per problem, n verdicts aligned with `answers`; lists or a [P, n] tensor.
        k: samples per vote, 1 <= k <= n.
    """
    return float(_majority_scores(answers, correct, k).mean())


def mean_at_n(correct: Correct) -> float:
    """mean@n: accuracy averaged over each problem's samples, then over problems."""
    num_samples, num_correct = _sample_counts(correct)
    return float((num_correct / num_samples).mean())


class _MeanOverProblems(Metric):
    """Sums a per-problem score and counts problems; `compute()` is their ratio (NaN before any update)."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("score_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("num_problems", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def _add(self, scores: torch.Tensor) -> None:
        self.score_sum += scores.sum().to(self.score_sum.device)
        self.num_problems += scores.numel()

    def compute(self) -> torch.Tensor:
        return (self.score_sum / self.num_problems).float()


class MeanAtN(_MeanOverProblems):
    """Streaming `mean_at_n`; `update(correct)` with a [P, n] tensor or lists of verdicts."""

    def update(self, correct: Correct) -> None:
        num_samples, num_correct = _sample_counts(correct)
        self._add(num_correct / num_samples)


class PassAtK(_MeanOverProblems):
    """Streaming unbiased pass@k (mean of `pass_at_k` over problems); `update(correct)` as `MeanAtN`."""

    def __init__(self, k: int, **kwargs) -> None:
        super().__init__(**kwargs)
        _check_k(k)
        self.k = k

    def update(self, correct: Correct) -> None:
        self._add(pass_at_k(*_sample_counts(correct), self.k).double())


class MajAtK(_MeanOverProblems):
    """Streaming `majority_at_k`; `update(answers, correct)` per batch of problems."""

    def __init__(self, k: int, **kwargs) -> None:
        super().__init__(**kwargs)
        _check_k(k)
        self.k = k

    def update(self, answers: Sequence[Sequence[str | None]], correct: Correct) -> None:
        self._add(_majority_scores(answers, correct, self.k))


def robustness_gap(accuracy_original: float, accuracy_perturbed: float) -> float:
    """Accuracy lost under perturbation: `original - perturbed`, in the inputs' unit (fraction or %).

    Positive means the model does worse on the perturbed twin (e.g. GSM8K -> GSM-Symbolic P2);
    negative means it does better. Smaller is more robust.
    """
    if not (math.isfinite(accuracy_original) and math.isfinite(accuracy_perturbed)):
        raise ValueError(f"accuracies must be finite, got {accuracy_original} and {accuracy_perturbed}")
    return float(accuracy_original) - float(accuracy_perturbed)


def relative_robustness_drop(accuracy_original: float, accuracy_perturbed: float) -> float:
    """Fraction of the original accuracy lost: `(original - perturbed) / original`; same sign as the gap."""
    if accuracy_original <= 0:
        raise ValueError(f"relative drop needs a positive original accuracy, got {accuracy_original}"
                         "; use robustness_gap")
    return robustness_gap(accuracy_original, accuracy_perturbed) / float(accuracy_original)


def benchmark_average(per_set: Mapping[str, float]) -> float:
    """Unweighted mean over benchmark sets (each set counts once, whatever its size), as the paper reports."""
    if not per_set:
        raise ValueError("benchmark_average needs at least one set score, got an empty mapping")
    bad = [name for name, value in per_set.items() if not math.isfinite(float(value))]
    if bad:
        raise ValueError(f"sets without a finite score: {bad}; evaluate them or leave them out")
    return sum(float(v) for v in per_set.values()) / len(per_set)
