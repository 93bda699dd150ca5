"""Contract: every registered loss, pooler and head builds by name and honours its call signature."""

import pytest
import torch

import clipo.contrastive  # noqa: F401  (registers the options)
from clipo.contrastive import ContrastiveObjective, ContrastiveRewardShaping, HeadStep
from clipo.registry import HEADS, LOSSES, POOLERS

N, T, D, E = 8, 6, 12, 5
Y = torch.tensor([1, 1, 0, 0, 1, 1, 1, 0.0])
G = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])


def test_every_option_is_registered():
    assert LOSSES.names() == ["infonce", "none", "soft_nn", "supcon", "supcon_in", "triplet"]
    assert POOLERS.names() == ["attention", "last", "max", "mean"]
    assert HEADS.names() == ["fixed", "linear", "mlp"]


@pytest.mark.parametrize("name", LOSSES.names())
def test_loss_contract(name):
    settings = {"level": "group", "anchors": "correct", "skip_trivial": True, "seed": 3}
    loss = LOSSES.build({"name": name, **settings, **({} if name == "triplet" else {"temperature": 0.1})})
    assert isinstance(loss.enabled, bool)
    z = torch.nn.functional.normalize(torch.randn(N, E), dim=-1).to(torch.bfloat16)
    per_sample, batch_loss = loss(z, Y, G)
    assert per_sample.shape == (N,) and per_sample.dtype == torch.float32
    assert batch_loss.shape == () and batch_loss.dtype == torch.float32
    assert torch.isfinite(per_sample).all() and torch.isfinite(batch_loss)


@pytest.mark.parametrize("name", POOLERS.names())
def test_pooler_contract(name):
    pooler = POOLERS.build({"name": name}, hidden_size=D)
    pooled = pooler(torch.randn(N, T, D, dtype=torch.bfloat16), torch.rand(N, T) > 0.3)
    assert pooled.shape == (N, D) and pooled.dtype == torch.float32


@pytest.mark.parametrize("name", HEADS.names())
def test_head_contract(name):
    head = HEADS.build({"name": name, "dim": E}, in_dim=D)
    z = head(torch.randn(N, D))
    assert z.shape == (N, E) and z.dtype == torch.float32


@pytest.mark.parametrize("head", HEADS.names())
@pytest.mark.parametrize("pooler", POOLERS.names())
@pytest.mark.parametrize("loss", [name for name in LOSSES.names() if name != "none"])
def test_objective_contract(loss, pooler, head):
    objective = ContrastiveObjective(
        POOLERS.build({"name": pooler}, hidden_size=D), HEADS.build({"name": head, "dim": E}, in_dim=D),
        LOSSES.build({"name": loss}),
    )
    shaping = ContrastiveRewardShaping(objective, HeadStep(objective, torch.optim.AdamW))
    hidden, mask = torch.randn(N, T, D), torch.ones(N, T, dtype=torch.bool)
    out = objective(hidden, mask, Y, G)
    _, shaped = shaping(hidden, mask, Y.bool(), G, Y)
    assert out.per_sample.shape == (N,) and shaped.bonus.shape == (N,) and out.batch_loss.shape == ()
    assert out.per_sample.dtype == shaped.bonus.dtype == out.batch_loss.dtype == torch.float32
    assert all(v.shape == () for v in out.metrics.values())


def test_loss_none_has_no_objective():
    with pytest.raises(ValueError, match="loss=none is plain RLVR"):
        ContrastiveObjective(POOLERS.build({"name": "mean"}, hidden_size=D), HEADS.build({"name": "linear", "dim": E},
                             in_dim=D), LOSSES.build({"name": "none"}))
