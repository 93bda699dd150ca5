"""Poolers against hand-computed values; heads' norm, dtype and trainability."""

import math

import pytest
import torch

import clipo.contrastive  # noqa: F401  (registers the options)
from clipo.registry import HEADS, POOLERS

# 3 rows, 4 tokens, D = 3. Padding tokens hold +-100 so any leak shows.
HIDDEN = torch.tensor(
    [
        [[1.0, 6.0, 3.0], [3.0, 4.0, 5.0], [100.0, 100.0, 100.0], [-100.0, -100.0, -100.0]],
        [[9.0, 9.0, 9.0], [9.0, 9.0, 9.0], [9.0, 9.0, 9.0], [9.0, 9.0, 9.0]],
        [[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 3.0], [-1.0, -1.0, -1.0]],
    ]
)
MASK = torch.tensor([[True, True, False, False], [False, False, False, False], [True, True, True, True]])

EXPECTED = {
    # row 0: tokens (1,6,3), (3,4,5); row 1: empty -> zeros; row 2: all four tokens
    "mean": [[2.0, 5.0, 4.0], [0.0, 0.0, 0.0], [0.0, 0.25, 0.5]],  # row 2: (0, 1, 2) / 4
    "last": [[3.0, 4.0, 5.0], [0.0, 0.0, 0.0], [-1.0, -1.0, -1.0]],
    "max": [[3.0, 6.0, 5.0], [0.0, 0.0, 0.0], [1.0, 2.0, 3.0]],
    "attention": [[2.0, 5.0, 4.0], [0.0, 0.0, 0.0], [0.0, 0.25, 0.5]],  # zero query = mean
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_poolers_hand_values(name):
    pooler = POOLERS.build({"name": name, "hidden_size": 3})
    pooled = pooler(HIDDEN, MASK)
    assert pooled.dtype == torch.float32
    torch.testing.assert_close(pooled, torch.tensor(EXPECTED[name]))


def test_last_pooler_uses_the_last_true_position_not_the_count():
    # a hole in the mask: count would point at token 1, the last True is token 2
    mask = torch.tensor([[True, False, True, False]])
    pooled = POOLERS.build({"name": "last", "hidden_size": 3})(HIDDEN[2:], mask)
    torch.testing.assert_close(pooled, torch.tensor([[0.0, 0.0, 3.0]]))


def test_attention_pooler_with_a_set_query():
    # q = (ln2 * sqrt3, 0, 0): score_t = h_t . q / sqrt3 = h_t0 * ln2.
    # row 0: scores ln2, 3 ln2 -> exp 2, 8 -> weights 0.2, 0.8
    #   pooled = 0.2 (1,6,3) + 0.8 (3,4,5) = (2.6, 4.4, 4.6)
    pooler = POOLERS.build({"name": "attention", "hidden_size": 3})
    with torch.no_grad():
        pooler.query.copy_(torch.tensor([math.log(2) * math.sqrt(3), 0.0, 0.0]))
    pooled = pooler(HIDDEN, MASK)
    torch.testing.assert_close(pooled[0], torch.tensor([2.6, 4.4, 4.6]))
    torch.testing.assert_close(pooled[1], torch.zeros(3))


def test_attention_gradient_reaches_its_query():
    pooler = POOLERS.build({"name": "attention", "hidden_size": 3})
    target = torch.tensor([1.0, -1.0, 0.5])
    (pooler(HIDDEN, MASK) @ target).sum().backward()
    assert torch.isfinite(pooler.query.grad).all()
    assert pooler.query.grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_poolers_give_finite_gradients_with_empty_rows_and_half_inputs(name):
    hidden = HIDDEN.to(torch.bfloat16).requires_grad_(True)
    pooled = POOLERS.build({"name": name, "hidden_size": 3})(hidden, MASK)
    assert pooled.dtype == torch.float32
    pooled.sum().backward()
    assert torch.isfinite(hidden.grad.float()).all()
    assert (hidden.grad[~MASK] == 0).all()  # padding gets no gradient


def test_pooler_shapes_checked():
    pooler = POOLERS.build({"name": "mean", "hidden_size": 3})
    with pytest.raises(ValueError, match=r"\[N, T, D\]"):
        pooler(HIDDEN, MASK[:, :3])


@pytest.mark.parametrize("name", ["linear", "mlp", "fixed"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_heads_give_unit_float32_embeddings(name, dtype):
    torch.manual_seed(0)  # a bias-free MLP maps an input whose ReLUs are all off to 0, which has no direction
    head = HEADS.build({"name": name, "dim": 7}, in_dim=5)
    z = head(torch.randn(4, 5).to(dtype))
    assert z.shape == (4, 7) and z.dtype == torch.float32
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(4))


def test_heads_whose_weights_were_cast_to_bf16_still_compute_in_float32():
    head = HEADS.build({"name": "mlp", "dim": 6}, in_dim=4).to(torch.bfloat16)
    z = head(torch.randn(3, 4))
    assert z.dtype == torch.float32
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(3))


@pytest.mark.parametrize("name", ["linear", "mlp"])
def test_bias_free_heads_ignore_the_pooled_norm(name):
    """The official pooling divides the sum of L-1 decode states by L, clipo by L-1: with bias-free
    heads (positively homogeneous) the unit embeddings are the same either way."""
    head = HEADS.build({"name": name, "dim": 8}, in_dim=16)
    h = torch.randn(5, 16)
    torch.testing.assert_close(head(h * 6 / 7), head(h))


def test_head_structure_and_trainability():
    linear = HEADS.build({"name": "linear", "dim": 8}, in_dim=16)
    assert [p.shape for p in linear.parameters()] == [(8, 16)]  # bias-free
    mlp = HEADS.build({"name": "mlp", "dim": 8}, in_dim=16)
    # Linear-ReLU-Linear without biases (the official head); hidden width defaults to in_dim
    assert [p.shape for p in mlp.parameters()] == [(16, 16), (8, 16)]
    assert mlp.fc1.bias is None and mlp.fc2.bias is None
    h = torch.randn(3, 16)
    want = torch.relu(h @ mlp.fc1.weight.T) @ mlp.fc2.weight.T
    torch.testing.assert_close(mlp(h), torch.nn.functional.normalize(want, dim=-1))
    assert HEADS.build({"name": "mlp", "dim": 8, "hidden_dim": 32}, in_dim=16).fc1.out_features == 32
    fixed = HEADS.build({"name": "fixed", "dim": 8}, in_dim=16)
    assert list(fixed.parameters()) == []  # nothing to train: the head step is skipped
    assert "weight" in fixed.state_dict()
    again = HEADS.build({"name": "fixed", "dim": 8}, in_dim=16)
    torch.testing.assert_close(fixed.weight, again.weight)  # same seed, same projection
    # the fixed projection is a plain matrix product followed by normalisation
    h = torch.randn(2, 16)
    torch.testing.assert_close(fixed(h), torch.nn.functional.normalize(h @ fixed.weight.T, dim=-1))


def test_head_dims_are_checked():
    with pytest.raises(ValueError, match="positive"):
        HEADS.build({"name": "linear", "dim": 0}, in_dim=4)
