import torch
from transformers import GenerationConfig

import clipo.contrastive  # noqa: F401  (registers the poolers)
from clipo.models import load_model
from clipo.registry import POOLERS
from clipo.rollout import (
    concat_rollouts,
    forward_responses,
    generate_rollouts,
    hidden_layer_module,
    hidden_mask_from_response,
    response_mask_from_ids,
)

RECORDS = [
    {"messages": [{"role": "user", "content": "What is 2+3?"}], "ground_truth": "5", "data_source": "t"},
    {"messages": [{"role": "user", "content": "Tom has 3 apples and buys 4 more. How many?"}], "ground_truth": "7"},
]


def _tiny_rollouts(group_size=3, layer=-1, max_new_tokens=16):
    model, tokenizer = load_model("tiny", tiny={})
    generation = GenerationConfig(
        do_sample=True, max_new_tokens=max_new_tokens, top_k=0,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    return model, tokenizer, generate_rollouts(model, tokenizer, RECORDS, group_size, generation, hidden_layer=layer)


def test_response_mask_keeps_tokens_through_first_eos():
    ids = torch.tensor([[5, 6, 2, 2, 2], [5, 2, 7, 2, 9], [5, 6, 7, 8, 9]])
    expected = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(response_mask_from_ids(ids, [2]), expected)


def test_rollout_batch_layout():
    _, tokenizer, batch = _tiny_rollouts(group_size=3)
    n, t = 6, batch.response_ids.shape[1]
    assert batch.sequences.shape[0] == n and batch.hidden.shape[:2] == (n, t)
    assert batch.groups.tolist() == [0, 0, 0, 1, 1, 1]
    assert batch.ground_truths == ["5"] * 3 + ["7"] * 3
    # left padding: the shorter prompt is padded on the left, so every prompt ends at P-1
    assert (batch.attention_mask[:, batch.prompt_len - 1] == 1).all()
    assert batch.attention_mask[3, 0] == 1 and batch.attention_mask[0, 0] == 0
    assert torch.equal(batch.attention_mask[:, batch.prompt_len :].bool(), batch.response_mask)
    # decoded text is exactly the masked response tokens
    for i in range(n):
        ids = batch.response_ids[i][batch.response_mask[i]]
        assert batch.responses[i] == tokenizer.decode(ids, skip_special_tokens=True)
    assert torch.equal(batch.truncated, ~(batch.response_ids == tokenizer.eos_token_id).any(-1))


def test_hidden_states_from_generation_equal_the_training_forward():
    """No extra forward pass for CLIPO: the states captured while sampling are those a forward pass computes."""
    for layer in (-1, 1):
        model, _, batch = _tiny_rollouts(layer=layer)
        with torch.no_grad():
            out = forward_responses(model, batch, hidden_layer=layer)
        mask = batch.hidden_mask  # the last token of a rollout has no state in generation
        torch.testing.assert_close(batch.hidden[mask], out.hidden[mask], atol=1e-5, rtol=1e-4)
        assert torch.equal(batch.hidden[:, -1], torch.zeros_like(batch.hidden[:, -1]))


def _plain_response_states(model, batch, layer):
    """Per rollout, hidden_states[layer] of a plain `model(..., output_hidden_states=True)` call on
    its unpadded prompt + response, at the response tokens 0..L-2 (the official code's positions:
    the decode steps' states, without the prefill's last prompt position): a list of [L-1, D]."""
    states = []
    for i in range(batch.sequences.shape[0]):
        prompt = batch.sequences[i, : batch.prompt_len][batch.attention_mask[i, : batch.prompt_len].bool()]
        response = batch.response_ids[i][batch.response_mask[i]]
        out = model(torch.cat([prompt, response])[None], output_hidden_states=True)
        start = prompt.shape[0]
        states.append(out.hidden_states[layer][0, start : start + response.shape[0] - 1])
    return states


def test_mean_pooled_vector_is_the_mean_of_the_response_token_states_of_a_plain_forward():
    """Both paths (the generation hook, the training forward) pool exactly the official positions."""
    mean = POOLERS.build({"name": "mean", "hidden_size": 64})
    for layer in (-1, 1):
        model, _, batch = _tiny_rollouts(layer=layer)
        with torch.no_grad():
            training = forward_responses(model, batch, hidden_layer=layer).hidden
            expected = torch.stack([s.mean(0) for s in _plain_response_states(model, batch, layer)])
        lengths = batch.response_lengths
        assert (lengths > 1).all() and lengths.unique().numel() > 1, "want rollouts of several lengths"
        assert torch.equal(batch.hidden_mask.sum(-1), lengths - 1)
        for hidden in (batch.hidden, training):
            torch.testing.assert_close(mean(hidden, batch.hidden_mask), expected, atol=1e-5, rtol=1e-4)


def test_a_one_token_rollout_pools_to_zeros():
    model, _, batch = _tiny_rollouts(max_new_tokens=1)
    assert batch.response_ids.shape[1] == 1 and not batch.hidden_mask.any()
    with torch.no_grad():
        training = forward_responses(model, batch, hidden_layer=-1).hidden
    for name in POOLERS.names():
        pooler = POOLERS.build({"name": name, "hidden_size": 64})
        for hidden in (batch.hidden, training):
            assert torch.equal(pooler(hidden, batch.hidden_mask), torch.zeros(6, 64)), name


def test_hidden_mask_is_the_response_mask_shifted_by_one():
    response_mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    expected = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    assert torch.equal(hidden_mask_from_response(response_mask), expected)


def test_logprobs_match_a_full_forward_with_log_softmax():
    model, _, batch = _tiny_rollouts()
    with torch.no_grad():
        out = forward_responses(model, batch, temperature=0.7, with_entropy=True)
        position_ids = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(batch.sequences, attention_mask=batch.attention_mask, position_ids=position_ids).logits
        p = batch.prompt_len
        reference = torch.log_softmax(logits[:, p - 1 : -1].float() / 0.7, -1)
        expected = reference.gather(-1, batch.response_ids.unsqueeze(-1)).squeeze(-1)
        expected_entropy = -(reference.exp() * reference).sum(-1)
    mask = batch.response_mask
    torch.testing.assert_close(out.logprobs[mask], expected[mask], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.entropy[mask], expected_entropy[mask], atol=1e-4, rtol=1e-4)


def test_hidden_layer_module_indexing():
    model, _ = load_model("tiny", tiny={})
    decoder = model.get_decoder()
    assert hidden_layer_module(model, -1) is decoder.norm
    assert hidden_layer_module(model, 2) is decoder.norm  # 2 layers -> 3 states
    assert hidden_layer_module(model, 0) is decoder.embed_tokens
    assert hidden_layer_module(model, 1) is decoder.layers[0]


def test_concat_rollouts_repads_and_keeps_every_forward_result():
    model, tokenizer, first = _tiny_rollouts(group_size=2, max_new_tokens=6)
    generation = GenerationConfig(do_sample=True, max_new_tokens=10, top_k=0, eos_token_id=tokenizer.eos_token_id,
                                  pad_token_id=tokenizer.pad_token_id)
    long_prompt = [{"messages": [{"role": "user", "content": "A much longer question, with many more characters?"}],
                    "ground_truth": "1"}]
    second = generate_rollouts(model, tokenizer, long_prompt, 2, generation, hidden_layer=-1)
    both = concat_rollouts([first, second], tokenizer.pad_token_id)

    assert both.prompt_len == max(first.prompt_len, second.prompt_len)
    assert both.groups.tolist() == [0, 0, 1, 1, 2, 2]  # distinct ids across batches
    assert both.responses == first.responses + second.responses
    with torch.no_grad():
        joint = forward_responses(model, both, hidden_layer=-1)
        alone = [forward_responses(model, b, hidden_layer=-1) for b in (first, second)]
    for rows, part, out in [(slice(0, 4), first, alone[0]), (slice(4, 6), second, alone[1])]:
        width = part.response_ids.shape[1]
        mask = part.response_mask
        torch.testing.assert_close(joint.logprobs[rows, :width][mask], out.logprobs[mask], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(both.hidden[rows, :width][mask], part.hidden[mask])
        assert not both.response_mask[rows, width:].any()
