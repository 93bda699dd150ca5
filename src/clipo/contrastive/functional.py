"""Pure contrastive loss functions of CLIPO (DESIGN.md section 1; arXiv 2603.10101).

Shapes: `N` rollouts, `E` embedding size. Every function takes unit embeddings z [N, E]
(any float dtype; all arithmetic runs in float32) and the `ContrastiveSets` of the batch, and
returns `(per_sample[N], batch_loss[])` in float32:

    s_ij = z_i . z_j / tau
    infonce    L_i = -s_ip + lse_{a in A(i)} s_ia,  p drawn uniformly from P(i)
    supcon     L_i = lse_{A(i)} s_ia - mean_{p in P(i)} s_ip           (SupCon "out")
    supcon_in  L_i = lse_{A(i)} s_ia - lse_{P(i)} s_ip + log |P(i)|    (SupCon "in")
    soft_nn    L_i = lse_{A(i)} s_ia - lse_{P(i)} s_ip

Non-anchors have L_i = 0. An anchor with an empty P(i) (possible only with
`skip_trivial=False`) also has L_i = 0: the positive term of every loss is an empty sum,
which is taken as 0, as pytorch-metric-learning's SupConLoss does; it still counts in the mean.
The batch loss is the mean of L_i over anchors, exactly 0 with a zero gradient when there is none.
Every intermediate stays finite on every row, so masked rows never leak NaN into the gradient.
"""

from __future__ import annotations

import torch

from clipo.contrastive.sets import ContrastiveSets


def similarity(embeddings: torch.Tensor, temperature: float) -> torch.Tensor:
    """s = z z^T / tau in float32. embeddings [N, E] -> [N, N]."""
    z = embeddings.float()
    return z @ z.T / temperature


def masked_logsumexp(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Row-wise log-sum-exp of values [N, M] over mask [N, M]; 0 (finite gradient) on empty rows."""
    has_any = mask.any(dim=1)  # [N]
    # Empty rows are replaced by zeros before the reduction: an all -inf row would give
    # -inf forward and NaN (0 * nan softmax) backward even where the result is discarded.
    filled = values.masked_fill(~mask, float("-inf"))
    filled = torch.where(has_any[:, None], filled, torch.zeros_like(values))
    return torch.where(has_any, torch.logsumexp(filled, dim=1), torch.zeros_like(has_any, dtype=values.dtype))


def reduce_over_anchors(raw: torch.Tensor, sets: ContrastiveSets) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero the loss of non-anchors and of anchors with empty P(i), and average over anchors.

    Args:
        raw: [N] float32 per-row loss, finite on every row.
        sets: the batch's sets.

    Returns:
        per_sample [N] and batch_loss [] (sum over anchors / max(#anchors, 1)).
    """
    valid = sets.anchors & sets.positives.any(dim=1)
    per_sample = torch.where(valid, raw, torch.zeros_like(raw))
    batch_loss = per_sample.sum() / sets.anchors.sum().clamp(min=1).to(per_sample.dtype)
    return per_sample, batch_loss


def infonce_loss(
    embeddings: torch.Tensor, sets: ContrastiveSets, positive_index: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """InfoNCE with one positive per anchor. positive_index [N] long, from `sample_positives`."""
    sim = similarity(embeddings, temperature)
    positive_sim = sim.gather(1, positive_index[:, None]).squeeze(1)  # [N] s_ip
    raw = masked_logsumexp(sim, sets.candidates) - positive_sim
    return reduce_over_anchors(raw, sets)


def supcon_loss(
    embeddings: torch.Tensor, sets: ContrastiveSets, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """SupCon "out" (Khosla et al. 2020, eq. 2): the log-likelihood averaged outside the log."""
    sim = similarity(embeddings, temperature)
    pos = sets.positives.float()
    mean_positive_sim = (sim * pos).sum(dim=1) / pos.sum(dim=1).clamp(min=1)
    raw = masked_logsumexp(sim, sets.candidates) - mean_positive_sim
    return reduce_over_anchors(raw, sets)


def supcon_in_loss(
    embeddings: torch.Tensor, sets: ContrastiveSets, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """SupCon "in" (Khosla et al. 2020, eq. 3): the positives' probabilities averaged inside the log."""
    sim = similarity(embeddings, temperature)
    log_num_positives = sets.positives.sum(dim=1).clamp(min=1).float().log()
    raw = masked_logsumexp(sim, sets.candidates) - masked_logsumexp(sim, sets.positives) + log_num_positives
    return reduce_over_anchors(raw, sets)


def soft_nn_loss(
    embeddings: torch.Tensor, sets: ContrastiveSets, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft nearest-neighbour loss (Frosst et al. 2019): -log of the positives' total probability."""
    sim = similarity(embeddings, temperature)
    raw = masked_logsumexp(sim, sets.candidates) - masked_logsumexp(sim, sets.positives)
    return reduce_over_anchors(raw, sets)


def pairwise_distance(embeddings: torch.Tensor) -> torch.Tensor:
    """Euclidean distances [N, N] in float32, with a finite gradient at 0 (duplicate embeddings)."""
    z = embeddings.float()
    sq_norms = (z * z).sum(dim=1)
    squared = sq_norms[:, None] + sq_norms[None, :] - 2.0 * (z @ z.T)
    # sqrt has an infinite derivative at 0; the floor (distance 1e-6) keeps it finite.
    return squared.clamp(min=1e-12).sqrt()


def triplet_loss(
    embeddings: torch.Tensor, sets: ContrastiveSets, margin: float, max_elements: int = 2**24
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triplet margin loss: L_i = mean over p in P(i), n in N(i) of relu(d_ip - d_in + margin).

    An anchor without a (p, n) pair has L_i = 0. The [rows, N, N] violation tensor is built for
    blocks of anchor rows holding at most `max_elements` entries, so memory stays bounded.
    """
    dist = pairwise_distance(embeddings)  # [N, N]
    n = dist.shape[0]
    rows_per_block = max(1, max_elements // max(n * n, 1))
    raw_blocks = []
    for start in range(0, n, rows_per_block):
        rows = slice(start, start + rows_per_block)
        violation = dist[rows, :, None] - dist[rows, None, :] + margin  # [R, N(p), N(n)]
        triplets = sets.positives[rows, :, None] & sets.negatives[rows, None, :]  # [R, N, N]
        hinge = torch.relu(violation) * triplets.float()
        raw_blocks.append(hinge.sum(dim=(1, 2)) / triplets.sum(dim=(1, 2)).clamp(min=1).float())
    raw = torch.cat(raw_blocks) if raw_blocks else dist.new_zeros(0)
    return reduce_over_anchors(raw, sets)
