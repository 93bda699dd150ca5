"""The losses against pytorch-metric-learning (PML), in the settings where the definitions coincide.

PML's candidates for anchor i are always every j != i in the batch it is given, and its positives
are the j with the same label. So:
- level="batch", anchors="all" is PML on the whole batch with labels y;
- level="group" is PML run on each group separately (our A(i) is i's group), then read at our anchors;
- level="cross" has in-group positives but batch-wide candidates, which no PML label scheme
  produces (a label would have to be shared inside a group only for correct rollouts yet also
  mark other groups' correct rollouts as negatives of one anchor and positives of another): not compared.
Reducers: PML's SupConLoss defaults to AvgNonZeroReducer (mean over elements with a nonzero loss);
ours is the mean over anchors, which includes anchors with L_i = 0 (an empty P(i) gives 0 in both).
We compare per-element losses with DoNothingReducer and batch losses with MeanReducer, or with the
default when every anchor's loss is nonzero.
"""

import pytest
import torch
from naive_contrastive import grouped_batch
from pytorch_metric_learning import distances, losses, reducers

import clipo.contrastive  # noqa: F401  (registers the options)
from clipo.registry import LOSSES

TAU = 0.05


def pml_per_element(pml_loss, z, labels):
    out = pml_loss(z, labels.long())["loss"]
    return out["losses"], out["indices"]


def test_supcon_batch_level_matches_pml_supcon():
    # anchors="all", skip_trivial=False: every rollout is an anchor, as every PML element is;
    # label 0 appears once, so rollout 0 has no positive: 0 in PML (empty sum) and in ours.
    z, _, _ = grouped_batch(10, [0], dim=12, seed=0)
    y = torch.tensor([0, 1, 1, 1, 1, 1, 1, 1, 1, 1.0])  # one wrong rollout, nine correct ones
    g = torch.arange(10)
    per, batch = LOSSES.build({"name": "supcon", "level": "batch", "anchors": "all", "skip_trivial": False})(z, y, g)
    pml_losses, _ = pml_per_element(losses.SupConLoss(temperature=TAU, reducer=reducers.DoNothingReducer()), z, y)
    torch.testing.assert_close(per, pml_losses, atol=1e-5, rtol=1e-5)
    assert per[0] == 0
    pml_mean = losses.SupConLoss(temperature=TAU, reducer=reducers.MeanReducer())(z, y.long())
    torch.testing.assert_close(batch, pml_mean, atol=1e-5, rtol=1e-5)


def test_supcon_batch_level_matches_pml_default_reducer():
    # both labels at least twice and skip_trivial: every rollout is an anchor with a nonzero loss,
    # so PML's AvgNonZeroReducer and our mean over anchors divide by the same count
    z, y, _ = grouped_batch(12, [5], dim=12, seed=1)
    g = torch.arange(12)
    _, batch = LOSSES.build({"name": "supcon", "level": "batch", "anchors": "all"})(z, y, g)
    torch.testing.assert_close(batch, losses.SupConLoss(temperature=TAU)(z, y.long()), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("anchors", ["correct", "all"])
def test_supcon_group_level_matches_pml_per_group(anchors):
    z, y, g = grouped_batch(8, [0, 1, 2, 5, 7, 8], dim=12, seed=2)
    loss = LOSSES.build({"name": "supcon", "anchors": anchors})
    per, _ = loss(z, y, g)
    anchor_mask = loss.sets(y, g).anchors
    assert anchor_mask.any()
    expected = torch.zeros_like(per)
    for gid in g.unique():
        members = torch.nonzero(g == gid).flatten()
        pml_losses, _ = pml_per_element(
            losses.SupConLoss(temperature=TAU, reducer=reducers.DoNothingReducer()), z[members], y[members]
        )
        if isinstance(pml_losses, torch.Tensor) and pml_losses.dim() == 1:  # PML returns 0 for 1-label groups
            expected[members] = pml_losses
    torch.testing.assert_close(per[anchor_mask], expected[anchor_mask], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["infonce", "supcon", "supcon_in", "soft_nn"])
def test_single_positive_losses_match_pml_ntxent(name):
    # NT-Xent's denominator is the pair's positive plus the anchor's negatives; ours is A(i) = P(i) + N(i).
    # They coincide when |P(i)| = 1 for every anchor (SimCLR's two views), and then the four losses
    # are the same number. Groups of 4 with 2 correct: each rollout has exactly one in-group positive.
    z, y, g = grouped_batch(4, [2, 2, 2], dim=12, seed=3)
    per, batch = LOSSES.build({"name": name, "anchors": "all"})(z, y, g)
    expected = torch.zeros_like(per)
    pml_means = []
    for gid in g.unique():
        members = torch.nonzero(g == gid).flatten()
        pair_losses, (a1, _) = pml_per_element(
            losses.NTXentLoss(temperature=TAU, reducer=reducers.DoNothingReducer()), z[members], y[members]
        )
        expected[members[a1]] = pair_losses
        pml_means.append(losses.NTXentLoss(temperature=TAU)(z[members], y[members].long()))
    torch.testing.assert_close(per, expected, atol=1e-5, rtol=1e-5)
    # 4 anchors in each group: the mean of the group means is the mean over anchors
    torch.testing.assert_close(batch, torch.stack(pml_means).mean(), atol=1e-5, rtol=1e-5)


def _pml_triplet(reducer, margin):
    return losses.TripletMarginLoss(
        margin=margin, distance=distances.LpDistance(), triplets_per_anchor="all", smooth_loss=False, reducer=reducer
    )


def test_triplet_per_anchor_matches_pml_triplets():
    # PML lists every (a, p, n) triplet; ours averages them per anchor first
    z, _, _ = grouped_batch(9, [0], dim=6, seed=4)
    y = torch.tensor([1, 1, 1, 1, 0, 0, 1, 0, 1.0])  # 6 vs 3: anchors have different triplet counts
    g = torch.arange(9)
    per, _ = LOSSES.build({"name": "triplet", "level": "batch", "anchors": "all", "margin": 0.5})(z, y, g)
    triplet_losses, (a, _, _) = pml_per_element(_pml_triplet(reducers.DoNothingReducer(), 0.5), z, y)
    sums = torch.zeros(9).index_add_(0, a, triplet_losses)
    counts = torch.bincount(a, minlength=9).float()
    torch.testing.assert_close(per, sums / counts, atol=1e-5, rtol=1e-5)


def test_triplet_batch_loss_matches_pml_mean_reducer_when_balanced():
    # 5 correct and 5 wrong: every anchor has 4 * 5 triplets, so the mean over anchors of per-anchor
    # means equals PML's MeanReducer over all triplets. (AvgNonZeroReducer drops zero triplets: no match.)
    z, y, _ = grouped_batch(10, [5], dim=6, seed=5)
    g = torch.arange(10)
    _, batch = LOSSES.build(
        {"name": "triplet", "level": "batch", "anchors": "all", "skip_trivial": False, "margin": 0.3}
    )(z, y, g)
    torch.testing.assert_close(batch, _pml_triplet(reducers.MeanReducer(), 0.3)(z, y.long()), atol=1e-5, rtol=1e-5)
