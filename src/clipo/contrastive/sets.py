"""Candidate, positive and negative sets of CLIPO's contrastive loss (DESIGN.md section 1).

Shapes: `N` rollouts in the batch. `y` verifier labels in {0, 1}, `g` prompt (group) ids.

    group: A(i) = {j != i : g_j = g_i},  P(i) = {j in A(i) : y_j = y_i}
    cross: A(i) = {j != i},              P(i) = {j in A(i) : g_j = g_i, y_j = y_i}
    batch: A(i) = {j != i},              P(i) = {j in A(i) : y_j = y_i}
    N(i) = A(i) minus P(i)

Anchors are the rollouts with y_i = 1 (`anchors="correct"`) or all of them (`"all"`);
with `skip_trivial` an anchor also needs |P(i)| > 0 and |N(i)| > 0.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

LEVELS = ("group", "cross", "batch")
ANCHOR_MODES = ("correct", "all")


class ContrastiveSets(NamedTuple):
    """Boolean masks for one batch; row i describes anchor candidate i."""

    candidates: torch.Tensor  # [N, N] A(i)
    positives: torch.Tensor  # [N, N] P(i)
    negatives: torch.Tensor  # [N, N] N(i) = A(i) \ P(i)
    anchors: torch.Tensor  # [N]


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """Raise a ValueError naming the valid choices when `value` is not one of them."""
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of: {', '.join(choices)}")


def labels_to_bool(labels: torch.Tensor) -> torch.Tensor:
    """Verifier labels [N] (bool or 0/1 numbers) as a bool tensor; anything else is an error.

    The value check costs one host sync per batch; it catches shaped rewards passed by mistake
    (e.g. 1.1 after a bonus, or DAPO's overlong penalty), which would otherwise be thresholded silently.
    """
    if labels.dtype == torch.bool:
        return labels
    if not ((labels == 0) | (labels == 1)).all():
        raise ValueError(
            "contrastive labels must be the verifier's 0/1 correctness, got values outside {0, 1}; "
            "pass the raw verifier scores, not shaped rewards"
        )
    return labels == 1


def build_sets(
    labels: torch.Tensor,
    groups: torch.Tensor,
    level: str = "group",
    anchors: str = "correct",
    skip_trivial: bool = True,
) -> ContrastiveSets:
    """Build A(i), P(i), N(i) and the anchor mask for a batch.

    Args:
        labels: [N] verifier labels, bool or 0/1.
        groups: [N] integer prompt ids (any values; equal id = same prompt).
        level: "group", "cross" or "batch" (see module docstring).
        anchors: "correct" (y_i = 1) or "all".
        skip_trivial: also require |P(i)| > 0 and |N(i)| > 0 of an anchor.

    Returns:
        ContrastiveSets with [N, N] bool candidates/positives/negatives and [N] bool anchors.
    """
    check_choice("level", level, LEVELS)
    check_choice("anchors", anchors, ANCHOR_MODES)
    if labels.dim() != 1 or groups.shape != labels.shape:
        raise ValueError(f"labels and groups must both be [N], got {tuple(labels.shape)} and {tuple(groups.shape)}")
    y = labels_to_bool(labels)
    n = y.shape[0]
    not_self = ~torch.eye(n, dtype=torch.bool, device=y.device)  # [N, N]
    same_group = groups[:, None] == groups[None, :]  # [N, N]
    same_label = y[:, None] == y[None, :]  # [N, N]
    if level == "group":
        candidates = same_group & not_self
        positives = candidates & same_label
    elif level == "cross":
        candidates = not_self
        positives = same_group & same_label & not_self
    else:
        candidates = not_self
        positives = not_self & same_label
    negatives = candidates & ~positives
    is_anchor = y.clone() if anchors == "correct" else torch.ones_like(y)
    if skip_trivial:
        is_anchor = is_anchor & positives.any(dim=1) & negatives.any(dim=1)
    return ContrastiveSets(candidates, positives, negatives, is_anchor)


def sample_positives(positives: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Draw one positive per row, uniformly from P(i), with a seeded generator.

    Each candidate gets an i.i.d. uniform key and the row's largest key among its positives wins,
    which is a uniform draw from P(i). Exactly N*N keys are drawn whatever the masks, so the
    generator's stream depends only on N. Keys are drawn on the generator's device (CPU).

    Args:
        positives: [N, N] bool P(i).
        generator: the torch.Generator that owns the stream (CPU).

    Returns:
        [N] long index of the drawn positive; arbitrary (but in range) where P(i) is empty.
    """
    n = positives.shape[0]
    keys = torch.rand((n, n), generator=generator, device=generator.device).to(positives.device)
    keys = keys.masked_fill(~positives, -1.0)
    return keys.argmax(dim=1)
