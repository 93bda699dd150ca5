"""The vllm rollout engine against the hf engine on the tiny model (fp32, CPU): same greedy tokens,
log-probs of vLLM's samples equal to the training forward's, weights pushed after an update; and
its KV-cache size, by hand.

One engine is shared by the module (it starts in ~5-20 s). The engine tests are skipped without
vLLM (`./scripts/setup.sh --vllm` installs it).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from clipo.data.arith import ArithDataset
from clipo.models import load_model
from clipo.rollout import HFEngine, Sampling, forward_responses, response_mask_from_ids
from clipo.rollout.vllm_support import GiB, kv_cache_bytes, kv_cache_problem

# vLLM's CPU attention needs head size >= 32: the tiny model with 2 heads of 32
TINY_VLLM = {"num_attention_heads": 2, "num_key_value_heads": 1}
RECORDS = ArithDataset(size=3, seed=0).records
# fp32 on CPU, same weights: vLLM's kernels (oneDNN GEMMs, its paged attention) differ from torch's
# in summation order only; measured max |diff| ~5e-7 on this model
LOGPROB_TOL = 1e-4


def sampling(temperature=1.0, seed=None):
    return Sampling(max_new_tokens=24, temperature=temperature, seed=seed)


def hf_greedy(policy, tokenizer, group_size):
    return HFEngine(policy, tokenizer).generate(RECORDS, group_size, sampling(temperature=0.0))


@pytest.fixture(scope="module")
def engine():
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM is not installed (./scripts/setup.sh --vllm installs it)")
    from clipo.rollout.vllm_engine import VLLMEngine

    policy, tokenizer = load_model("tiny", tiny=TINY_VLLM)
    engine = VLLMEngine(policy, tokenizer)
    torch.manual_seed(123)
    rng, threads = torch.get_rng_state(), torch.get_num_threads()
    engine._engine()  # the engine starts here, once for the module
    # building it must leave the trainer's random stream and thread count alone
    assert torch.equal(torch.get_rng_state(), rng) and torch.get_num_threads() == threads
    torch.set_num_threads(threads)  # and torch.set_num_threads works again (vLLM's CPU worker replaces it)
    return engine


def assert_same_rollouts(a, b):
    assert a.prompt_len == b.prompt_len and torch.equal(a.response_mask, b.response_mask)
    assert torch.equal(a.sequences.masked_fill(~a.attention_mask.bool(), 0), b.sequences.masked_fill(~b.attention_mask.bool(), 0))
    assert torch.equal(a.attention_mask, b.attention_mask) and torch.equal(a.truncated, b.truncated)
    assert a.responses == b.responses and a.ground_truths == b.ground_truths and torch.equal(a.groups, b.groups)


def test_greedy_responses_equal_the_hf_engine_token_for_token(engine):
    batch = engine.generate(RECORDS, 2, sampling(temperature=0.0))
    assert_same_rollouts(batch, hf_greedy(engine.policy, engine.tokenizer, 2))
    assert batch.hidden is None and batch.sampling_logprobs.shape == batch.response_mask.shape


def test_sampled_batch_layout_and_logprobs_match_the_training_forward(engine):
    batch = engine.generate(RECORDS, 8, sampling(temperature=0.7, seed=5))
    eos = [engine.tokenizer.eos_token_id]
    assert batch.groups.tolist() == [g for g in range(3) for _ in range(8)]
    assert batch.ground_truths == [r["ground_truth"] for r in RECORDS for _ in range(8)]
    assert torch.equal(batch.response_mask, response_mask_from_ids(batch.response_ids, eos))
    assert (~batch.truncated).any() and batch.truncated.any()  # both endings occur in this draw
    ended = batch.response_ids[~batch.truncated].gather(1, batch.response_lengths[~batch.truncated, None] - 1)
    assert (ended == eos[0]).all()  # the mask keeps the EOS token
    with torch.no_grad():
        train = forward_responses(engine.policy, batch, temperature=0.7).logprobs
    diff = (train - batch.sampling_logprobs)[batch.response_mask].abs()
    assert diff.max() < LOGPROB_TOL
    # a fixed seed reproduces the draw; the group members differ from each other
    again = engine.generate(RECORDS, 8, sampling(temperature=0.7, seed=5))
    assert torch.equal(again.sequences, batch.sequences)
    assert len(set(batch.responses[:8])) > 1


def test_engine_samples_from_the_updated_weights_after_sync(engine):
    policy, tokenizer = engine.policy, engine.tokenizer
    before = engine.generate(RECORDS, 1, sampling(temperature=0.0))
    pushes = engine.pushes
    engine.generate(RECORDS, 1, sampling(temperature=0.0))
    assert engine.pushes == pushes  # nothing changed, nothing pushed
    optimizer = torch.optim.Adam(policy.parameters(), lr=3e-2)  # large: the greedy output must change
    target = hf_greedy(policy, tokenizer, 1)
    for _ in range(5):
        out = forward_responses(policy, target, 1.0)
        out.logprobs[target.response_mask].mean().backward()  # push the greedy tokens down
        optimizer.step()
        optimizer.zero_grad()
    engine.sync_weights(policy)
    after = engine.generate(RECORDS, 1, sampling(temperature=0.0))
    assert engine.pushes == pushes + 1
    assert not torch.equal(after.sequences, before.sequences)
    assert_same_rollouts(after, hf_greedy(policy, tokenizer, 1))


# SmolLM2-135M's attention: 30 layers, 3 KV heads of 64; a token's K and V in fp32 take
# 2 x 30 x 3 x 64 x 4 = 46,080 bytes
SMOLLM2 = {"num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "hidden_size": 576}


def test_kv_cache_holds_the_first_rollout_phase_and_one_longest_sequence():
    from transformers import LlamaConfig

    config = LlamaConfig(**SMOLLM2)
    # 4 prompts x 8 rollouts of at most 120 + 64 tokens, each in two blocks of 128: 8,192 tokens
    assert kv_cache_bytes(config, torch.float32, 32, 184, max_model_len=512) == 32 * 256 * 46080
    # one sequence of the model's 8,192 positions, plus a block for vLLM's rounding, is more than that
    assert kv_cache_bytes(config, torch.float32, 32, 184, max_model_len=8192) == (8192 + 128) * 46080
    assert kv_cache_bytes(config, torch.bfloat16, 32, 184, max_model_len=512) == 32 * 256 * 46080 // 2
    assert kv_cache_bytes(config, torch.float32, 32, 257, max_model_len=512) == 32 * 384 * 46080
    # a huge phase is capped (vLLM runs it in waves); a head_dim given explicitly is used as is
    assert kv_cache_bytes(config, torch.float32, 10**6, 184, 512, cap=GiB) == GiB
    config.head_dim = 128
    assert kv_cache_bytes(config, torch.float32, 32, 184, max_model_len=512) == 32 * 256 * 92160


@pytest.mark.parametrize("value", [0, -1, "big", True, None])
def test_unusable_kv_cache_size_says_what_to_give(value):
    assert "give a size in GiB > 0 (e.g. 0.5) or auto" in kv_cache_problem(value)
    assert kv_cache_problem("auto") is None and kv_cache_problem(0.25) is None and kv_cache_problem(2) is None


def test_engine_kv_cache_is_the_size_clipo_chose(engine):
    chosen = engine.llm.llm_engine.vllm_config.cache_config.kv_cache_memory_bytes
    config = engine.policy.config
    assert chosen == kv_cache_bytes(config, torch.float32, 1, 0, config.max_position_embeddings)
