"""Naive references for the contrastive losses, written straight from DESIGN.md section 1.

Python loops over rollouts, float64 (Python floats); no code shared with `clipo.contrastive`.
"""

from __future__ import annotations

import math

import torch


def naive_sets(labels, groups, level, anchors, skip_trivial):
    """Lists A, P, N (sets of indices) and the anchor list, one rollout at a time."""
    y = [int(v) for v in labels.tolist()]
    g = [int(v) for v in groups.tolist()]
    n = len(y)
    cand, pos, neg, anchor_list = [], [], [], []
    for i in range(n):
        if level == "group":
            a = {j for j in range(n) if j != i and g[j] == g[i]}
            p = {j for j in a if y[j] == y[i]}
        elif level == "cross":
            a = {j for j in range(n) if j != i}
            p = {j for j in a if g[j] == g[i] and y[j] == y[i]}
        elif level == "batch":
            a = {j for j in range(n) if j != i}
            p = {j for j in a if y[j] == y[i]}
        else:
            raise AssertionError(level)
        cand.append(a)
        pos.append(p)
        neg.append(a - p)
        is_anchor = y[i] == 1 if anchors == "correct" else True
        if skip_trivial:
            is_anchor = is_anchor and len(p) > 0 and len(a - p) > 0
        if is_anchor:
            anchor_list.append(i)
    return cand, pos, neg, anchor_list


def _lse(values):
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def naive_loss(name, embeddings, labels, groups, level, anchors, skip_trivial, temperature=0.05, margin=0.2,
               positive_index=None):
    """(per_sample list, batch loss) of loss `name`; anchors with empty P(i) have L_i = 0."""
    z = embeddings.double().tolist()
    n = len(z)
    dot = [[sum(a * b for a, b in zip(z[i], z[j])) for j in range(n)] for i in range(n)]
    s = [[dot[i][j] / temperature for j in range(n)] for i in range(n)]
    cand, pos, neg, anchor_list = naive_sets(labels, groups, level, anchors, skip_trivial)
    per = [0.0] * n
    for i in anchor_list:
        A, P, Nn = cand[i], pos[i], neg[i]
        if not P:
            continue
        lse_a = _lse([s[i][a] for a in A])
        if name == "infonce":
            p = int(positive_index[i])
            assert p in P, "the drawn positive must be in P(i)"
            per[i] = -s[i][p] + lse_a
        elif name == "supcon":
            per[i] = -sum(s[i][p] - lse_a for p in P) / len(P)
        elif name == "supcon_in":
            # -log((1/|P|) sum_p exp(s_ip) / sum_a exp(s_ia)), the sum taken in log space (tau -> 0 underflows)
            per[i] = -(_lse([s[i][p] - lse_a for p in P]) - math.log(len(P)))
        elif name == "soft_nn":
            per[i] = -_lse([s[i][p] - lse_a for p in P])
        elif name == "triplet":
            def dist(a, b):
                return math.sqrt(sum((u - v) ** 2 for u, v in zip(z[a], z[b])))
            hinges = [max(dist(i, p) - dist(i, q) + margin, 0.0) for p in P for q in Nn]
            per[i] = sum(hinges) / len(hinges) if hinges else 0.0
        else:
            raise AssertionError(name)
    batch = sum(per) / len(anchor_list) if anchor_list else 0.0
    return per, batch


def grouped_batch(group_size, correct_counts, dim=8, seed=0):
    """A shuffled batch with one group per entry of `correct_counts` (arbitrary, non-contiguous ids).

    Returns (unit embeddings [N, dim] float32, labels [N] float32, groups [N] long).
    """
    gen = torch.Generator().manual_seed(seed)
    labels, groups = [], []
    for k, num_correct in enumerate(correct_counts):
        labels += [1.0] * num_correct + [0.0] * (group_size - num_correct)
        groups += [7 * k + 3] * group_size
    order = torch.randperm(len(labels), generator=gen)
    labels = torch.tensor(labels)[order]
    groups = torch.tensor(groups)[order]
    z = torch.nn.functional.normalize(torch.randn(len(labels), dim, generator=gen), dim=-1)
    return z, labels, groups
