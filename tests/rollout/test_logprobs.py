import pytest
import torch
from torch.testing import assert_close

from clipo.rollout.logprobs import token_logprobs

M, D, V = 23, 8, 37


def full_logits_reference(head, states, targets, temperature):
    """The computation before chunking: all [M, V] float32 logits at once."""
    logp = torch.log_softmax(head(states).float() / temperature, -1)  # [M, V]
    return logp.gather(-1, targets[:, None]).squeeze(-1), -(logp.exp() * logp).sum(-1)


def tied_model(seed, bias=False):
    """Embedding and LM head sharing one weight (SmolLM2 ties them), plus a mixing layer."""
    torch.manual_seed(seed)
    embed = torch.nn.Embedding(V, D)
    head = torch.nn.Linear(D, V, bias=bias)
    head.weight = embed.weight
    mix = torch.nn.Linear(D, D)
    return embed, head, mix


@pytest.mark.parametrize("chunks", [1, 5, M, M + 7])  # M + 7: some chunks empty
@pytest.mark.parametrize("bias", [False, True])
def test_values_and_gradients_equal_the_full_logits(chunks, bias):
    embed, head, mix = tied_model(seed=chunks, bias=bias)
    ids, targets = torch.randint(V, (M,)), torch.randint(V, (M,))
    weights = torch.randn(M)  # a loss that weighs every position differently

    def run(fn):
        embed.zero_grad(), head.zero_grad(), mix.zero_grad()
        states = mix(embed(ids))  # gradient reaches the tied weight through the states and through the head
        states.retain_grad()
        logp, entropy = fn(states)
        (weights * logp).sum().backward()
        return logp.detach(), entropy, states.grad.clone(), embed.weight.grad.clone(), mix.weight.grad.clone()

    got = run(lambda s: token_logprobs(head, s, targets, 0.7, with_entropy=True, chunks=chunks))
    expected = run(lambda s: full_logits_reference(head, s, targets, 0.7))
    for g, e in zip(got, expected):
        assert_close(g, e.detach(), atol=1e-5, rtol=1e-5)
    assert got[3].abs().sum() > 0  # a real gradient on the tied weight
    assert not got[1].requires_grad  # entropy is a metric


def test_head_never_sees_more_than_a_chunk_and_recomputes_in_backward():
    embed, head, mix = tied_model(seed=0)
    seen = []
    head.register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0].shape[0]))
    states = mix(embed(torch.randint(V, (M,))))
    logp, _ = token_logprobs(head, states, torch.randint(V, (M,)), chunks=5)
    assert seen == [5, 5, 5, 4, 4]  # 23 positions in 5 chunks: no [M, V] logits in the forward
    logp.sum().backward()
    assert sorted(seen[5:]) == [4, 4, 5, 5, 5]  # each chunk's logits are recomputed, not kept


def test_empty_chunks_still_call_the_head_forward_and_backward():
    """Under ZeRO-3 each head call gathers its weight: a rank with fewer positions makes the agreed calls."""
    embed, head, mix = tied_model(seed=0)
    seen = []
    head.register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0].shape[0]))
    states = mix(embed(torch.randint(V, (2,))))
    logp, _ = token_logprobs(head, states, torch.randint(V, (2,)), chunks=4)
    assert seen == [1, 1, 0, 0] and logp.shape == (2,)
    logp.sum().backward()
    assert sorted(seen[4:]) == [0, 0, 1, 1] and embed.weight.grad.abs().sum() > 0


def test_no_grad_pass_skips_checkpointing_and_empty_input():
    embed, head, mix = tied_model(seed=1)
    with torch.no_grad():
        states = mix(embed(torch.randint(V, (M,))))
        targets = torch.randint(V, (M,))
        logp, entropy = token_logprobs(head, states, targets, with_entropy=False, chunks=6)
        expected, _ = full_logits_reference(head, states, targets, 1.0)
    assert entropy is None and not logp.requires_grad
    assert_close(logp, expected)
    empty, _ = token_logprobs(head, mix(embed(torch.zeros(0, dtype=torch.long))), torch.zeros(0, dtype=torch.long))
    assert empty.shape == (0,) and empty.requires_grad  # still attached: a loss over it can backpropagate
    with pytest.raises(ValueError, match="chunks=0 must be at least 1"):
        token_logprobs(head, states, targets, chunks=0)
