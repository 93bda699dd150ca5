"""The varlen layout (`clipo.rollout.varlen`): rollouts back to back in one row, positions restarting
per rollout, no mask. Forced on SDPA, where transformers builds the block-diagonal mask from the
position ids, it must give the padded forward's log-probs, entropy, hidden states and gradients;
flash-attention's varlen kernels take the same row (checked on a GPU by benchmarks/gpu_check.py)."""

from types import SimpleNamespace

import pytest
import torch
from torch.testing import assert_close
from transformers.integrations.flash_attention import flash_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flash_attention_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from clipo.algorithms import StepNormalizer
from clipo.builders import build_batching
from clipo.models import load_model
from clipo.registry import ALGORITHMS
from clipo.rollout.forward import ForwardLayout, TrainingForward
from clipo.rollout.varlen import is_varlen_attention, varlen_rows
from tests.conftest import TINY_OVERRIDES, compose_config
from tests.rollout.test_forward import TIGHT, assert_same_grads, grads_of, padded_reference, tiny, uneven  # noqa: F401


def test_layout_by_hand():
    # two rollouts, P=3, T=3: prompt [_, 5, 6] + response [7, 8, _]; prompt [9, 10, 11] + response [12, _, _]
    sequences = torch.tensor([[0, 5, 6, 7, 8, 0], [9, 10, 11, 12, 0, 0]])
    attention = torch.tensor([[0, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0]])
    response = attention[:, 3:].bool()
    rows = varlen_rows(sequences, attention, response, 3)
    assert rows.input_ids.tolist() == [[5, 6, 7, 8, 9, 10, 11, 12]]
    assert rows.position_ids.tolist() == [[0, 1, 2, 3, 0, 1, 2, 3]]
    assert rows.predicting.tolist() == [1, 2, 6]  # last prompt token, then the token before each response token
    assert rows.own.tolist() == [[2, 3, 0], [7, 0, 0]]


def test_layout_leaves_out_empty_responses_unless_all_are_empty():
    sequences = torch.tensor([[5, 6, 7], [8, 9, 0], [1, 2, 3]])
    attention = torch.tensor([[1, 1, 1], [1, 1, 0], [0, 1, 1]])
    rows = varlen_rows(sequences, attention, attention[:, 2:].bool(), 2)
    assert rows.input_ids.tolist() == [[5, 6, 7, 2, 3]] and rows.position_ids.tolist() == [[0, 1, 2, 0, 1]]
    assert rows.predicting.tolist() == [1, 3]
    nothing = varlen_rows(sequences, attention, torch.zeros(3, 1, dtype=torch.bool), 2)
    assert nothing.input_ids.tolist() == [[5, 6, 8, 9, 2]] and nothing.predicting.numel() == 0


def test_varlen_kernels_are_recognised(monkeypatch):
    assert [is_varlen_attention(n) for n in ("flash_attention_2", "flash_attention_3", "sdpa", "eager", None)] == [
        True, True, False, False, False]
    # a hub kernel with `flash_attn_varlen_func`, as transformers registers it when the model loads
    name = "kernels-community/flash-attn2"
    assert not is_varlen_attention(name)
    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._global_mapping, name, flash_attention_forward)
    monkeypatch.setitem(ALL_MASK_ATTENTION_FUNCTIONS._global_mapping, name, flash_attention_mask)
    assert is_varlen_attention(name)


@pytest.mark.parametrize("attention,layout", [
    ("sdpa", "shared_prompt"), ("eager", "shared_prompt"), ("flash_attention_2", "varlen")])
def test_auto_plans_varlen_on_varlen_kernels_only(tmp_path, attention, layout):
    cfg = compose_config(TINY_OVERRIDES, output_dir=tmp_path)
    assert cfg.ppo.forward_layout == "auto"
    if attention == "flash_attention_2":  # the layout is decided from the config's kernel name alone
        policy = SimpleNamespace(config=SimpleNamespace(_attn_implementation=attention))
    else:
        policy, _ = load_model("tiny", tiny={})
        policy.set_attn_implementation(attention)
    assert build_batching(cfg, policy, whole_groups=False).forward.layout is ForwardLayout(layout)


VARLEN = TrainingForward(ForwardLayout.VARLEN)


def with_empty_response(batch):
    batch = uneven(batch)
    batch.response_mask[4] = False  # an empty response: nothing to predict, left out of the row
    batch.attention_mask[4, batch.prompt_len :] = 0
    return batch


def decoder_inputs(model):
    calls = []
    handle = model.get_decoder().register_forward_pre_hook(
        lambda _m, _a, kwargs: calls.append(kwargs), with_kwargs=True)
    return calls, handle


@pytest.mark.parametrize("shape", ["as sampled", "uneven, an empty response"])
def test_varlen_values_equal_the_padded_forward(tiny, shape):  # noqa: F811
    model, _, batch = tiny
    batch = with_empty_response(batch) if shape != "as sampled" else batch
    calls, handle = decoder_inputs(model)
    with torch.no_grad():
        out = VARLEN(model, batch, temperature=0.7, hidden_layer=1, with_entropy=True)
        handle.remove()
        logprobs, entropy, hidden = padded_reference(model, batch, 0.7, hidden_layer=1)
    kept = batch.response_mask.any(-1)
    assert len(calls) == 1 and calls[0]["attention_mask"] is None  # one row of real tokens, no mask
    assert tuple(calls[0]["input_ids"].shape) == (1, int(batch.attention_mask[kept].sum()))
    mask = batch.response_mask
    assert_close(out.logprobs[mask], logprobs[mask], **TIGHT)
    assert_close(out.entropy[mask], entropy[mask], atol=1e-4, rtol=1e-5)
    assert_close(out.hidden[mask], hidden[mask], **TIGHT)
    assert (out.logprobs[~mask] == 0).all() and (out.hidden[~mask] == 0).all() and out.hidden.shape == hidden.shape


def test_varlen_layout_with_eager_attention(tiny):  # noqa: F811
    model, _, batch = tiny
    eager, _ = load_model("tiny", tiny={})  # same weights (seeded)
    eager.set_attn_implementation("eager")  # eager adds transformers' block-diagonal mask to the scores
    batch = with_empty_response(batch)
    with torch.no_grad():
        out = VARLEN(eager, batch, hidden_layer=-1)
        logprobs, _, hidden = padded_reference(model, batch, hidden_layer=-1)
    mask = batch.response_mask
    assert_close(out.logprobs[mask], logprobs[mask], **TIGHT)
    assert_close(out.hidden[mask], hidden[mask], **TIGHT)


def test_varlen_gradients_equal_the_padded_forward(tiny):  # noqa: F811
    model, _, batch = tiny
    batch = with_empty_response(batch)
    algorithm = ALGORITHMS.build({"name": "grpo", "kl_coef": 0.05})
    gen = torch.Generator().manual_seed(5)
    advantages = torch.randn(len(batch.responses), generator=gen)
    with torch.no_grad():
        old = padded_reference(model, batch)[0] + 0.05 * torch.randn(batch.response_mask.shape, generator=gen)
    norm, mask = StepNormalizer.from_mask(batch.response_mask), batch.response_mask

    def loss(logprobs, hidden):  # the policy gradient and a term on CLIPO's hidden states
        pg = algorithm(logprobs, old, advantages, mask, norm, old.detach() - 0.1)[0]
        return pg + hidden[mask].pow(2).mean()

    out = TrainingForward(ForwardLayout.VARLEN, chunk_size=7)(model, batch, hidden_layer=-1)
    got = grads_of(model, loss(out.logprobs, out.hidden))
    logprobs, _, hidden = padded_reference(model, batch, hidden_layer=-1)
    assert_same_grads(got, grads_of(model, loss(logprobs, hidden)))
