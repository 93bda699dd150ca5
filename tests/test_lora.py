"""LoRA: which parameters train, the disabled adapter is the base model exactly, exports load."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, GenerationConfig

from clipo.models import apply_lora, is_adapter, load_model, save_merged
from clipo.rollout import forward_responses, generate_rollouts

RECORDS = [{"messages": [{"role": "user", "content": "1+2="}], "ground_truth": "3", "data_source": "arith"},
           {"messages": [{"role": "user", "content": "7-5="}], "ground_truth": "2", "data_source": "arith"}]


def perturb_adapter(model: torch.nn.Module) -> None:
    """LoRA starts as the identity (B = 0); give B values so the adapted model differs from the base."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)


@pytest.fixture
def base_and_lora():
    base, tokenizer = load_model("tiny", tiny={}, seed=3)
    lora = apply_lora(copy.deepcopy(base), rank=4, alpha=8)
    perturb_adapter(lora)
    return base, lora, tokenizer


def rollouts_of(model, tokenizer):
    sampling = GenerationConfig(do_sample=True, max_new_tokens=6, eos_token_id=tokenizer.eos_token_id,
                                pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    return generate_rollouts(model, tokenizer, RECORDS, 2, sampling)


def test_only_adapter_parameters_train():
    base, _ = load_model("tiny", tiny={}, seed=3)
    lora = apply_lora(base, rank=4, alpha=8, target_modules=["q_proj", "v_proj"])
    trainable = [n for n, p in lora.named_parameters() if p.requires_grad]
    # 2 layers x (q_proj, v_proj) x (lora_A, lora_B)
    assert len(trainable) == 8 and all("lora_" in n and ("q_proj" in n or "v_proj" in n) for n in trainable)
    assert is_adapter(lora) and not is_adapter(load_model("tiny", tiny={})[0])
    all_linear = apply_lora(load_model("tiny", tiny={})[0], rank=2, alpha=4)
    names = {n.split(".")[-4] for n, p in all_linear.named_parameters() if p.requires_grad}
    assert names == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}  # no lm_head


def test_bad_targets_and_rank_say_what_to_use():
    with pytest.raises(ValueError, match="use all-linear or names among .*q_proj"):
        apply_lora(load_model("tiny", tiny={})[0], rank=4, alpha=8, target_modules=["qkv"])
    with pytest.raises(ValueError, match="lora_rank must be >= 1"):
        apply_lora(load_model("tiny", tiny={})[0], rank=-1, alpha=8)


def test_disabled_adapter_gives_the_base_models_logprobs_exactly(base_and_lora):
    base, lora, tokenizer = base_and_lora
    rollouts = rollouts_of(lora, tokenizer)
    with torch.no_grad():
        expected = forward_responses(base, rollouts).logprobs
        adapted = forward_responses(lora, rollouts).logprobs
        with lora.disable_adapter():
            reference = forward_responses(lora, rollouts).logprobs
        after = forward_responses(lora, rollouts).logprobs
    torch.testing.assert_close(reference, expected, rtol=0, atol=0)
    assert (adapted - expected).abs().max() > 1e-3  # the adapter does change the model
    torch.testing.assert_close(after, adapted, rtol=0, atol=0)  # and is back on after the context


def test_merged_export_loads_with_plain_transformers_and_matches(base_and_lora, tmp_path):
    _, lora, tokenizer = base_and_lora
    lora.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    save_merged(lora, tokenizer, tmp_path / "merged")
    assert is_adapter(lora) and any("lora_" in n for n, _ in lora.named_parameters())  # merged a copy
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert not any("lora" in n for n, _ in merged.named_parameters())
    rollouts = rollouts_of(lora, tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(forward_responses(merged, rollouts).logprobs,
                                   forward_responses(lora, rollouts).logprobs, rtol=1e-5, atol=1e-5)


def test_adapter_export_loads_onto_the_base_with_peft(base_and_lora, tmp_path):
    from peft import PeftModel

    base, lora, tokenizer = base_and_lora
    lora.save_pretrained(tmp_path / "adapter")
    loaded = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "adapter")
    rollouts = rollouts_of(lora, tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(forward_responses(loaded, rollouts).logprobs,
                                   forward_responses(lora, rollouts).logprobs, rtol=0, atol=0)


LORA = ["model.lora_rank=4", "model.lora_alpha=8", "data.val=null", "optimizer.lr=1e-2"]


def test_lora_run_trains_only_adapter_and_head_with_the_base_as_reference(parity_verifier, tmp_path, monkeypatch):
    from clipo.train import train
    from tests.conftest import tiny_parity_config

    loads = []
    import clipo.builders

    monkeypatch.setattr(clipo.builders, "load_model", lambda **kw: loads.append(kw) or load_model(**kw))
    cfg = tiny_parity_config(tmp_path, *LORA, "algorithm.kl_coef=0.1", "export.merge=true")
    initial = apply_lora(load_model("tiny", tiny={}, seed=0)[0], rank=4, alpha=8)
    before = {k: v.detach().clone() for k, v in initial.named_parameters()}
    metrics, objects = train(cfg)
    module = objects["module"]
    assert len(loads) == 1 and module.reference is None  # KL on, yet no second model
    assert metrics["actor/kl"] > 0  # the adapter moved away from the base within 2 steps
    changed = {k for k, v in module.policy.named_parameters() if not torch.equal(before[k], v.detach())}
    assert changed and all("lora_" in k for k in changed), sorted(changed)[:3]
    from clipo.builders import build_contrastive
    from clipo.contrastive import ContrastiveMode

    fresh = build_contrastive(cfg, ContrastiveMode.REWARD, hidden_size=64)  # the head as it started (seeded)
    fresh = dict(fresh.objective.named_parameters())
    assert any(not torch.equal(fresh[k], v.detach()) for k, v in module.contrastive.named_parameters())
    # the checkpoint holds the adapter (not the frozen base), the head and both optimizers
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    policy_keys = [k for k in saved["state_dict"] if k.startswith("policy.")]
    assert policy_keys and all("lora_" in k for k in policy_keys)
    assert any(k.startswith("contrastive.") for k in saved["state_dict"]) and saved["clipo"]["head_pooler_optimizer"]
    assert len(saved["optimizer_states"]) == 1
    # exports: the adapter in PEFT's format, and a merged model that plain transformers loads
    assert (tmp_path / "policy" / "adapter_config.json").is_file()
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "policy_merged")
    rollouts = rollouts_of(module.policy, module.tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(forward_responses(merged, rollouts).logprobs,
                                   forward_responses(module.policy, rollouts).logprobs, rtol=1e-5, atol=1e-5)


def test_lora_resume_is_exact(parity_verifier, tmp_path):
    from clipo.train import train
    from tests.conftest import tiny_parity_config

    overrides = [*LORA, "trainer.max_steps=3"]
    _, full = train(tiny_parity_config(tmp_path / "full", *overrides))
    first = tiny_parity_config(tmp_path / "first", *overrides)
    first.trainer.max_steps = 2
    train(first)
    checkpoint = tmp_path / "first" / "checkpoints" / "last.ckpt"
    _, resumed = train(tiny_parity_config(tmp_path / "resumed", *overrides, f"ckpt_path={checkpoint}"))
    expected = dict(full["module"].named_parameters())
    for name, value in resumed["module"].named_parameters():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=0, msg=name)


def test_merged_weights_for_an_inference_engine_match_the_merged_export(base_and_lora, tmp_path):
    from clipo.models import merged_weights

    base, lora, tokenizer = base_and_lora
    before = {k: v.clone() for k, v in lora.state_dict().items()}
    weights = merged_weights(lora)
    exported = AutoModelForCausalLM.from_pretrained(save_merged(lora, tokenizer, tmp_path / "merged")).state_dict()
    assert set(weights) == set(base.state_dict()) == set(exported)  # the plain model's names
    for name, value in exported.items():
        torch.testing.assert_close(weights[name], value, rtol=1e-6, atol=1e-6, msg=name)
    assert all(torch.equal(before[k], v) for k, v in lora.state_dict().items())  # the model is unchanged
    assert not torch.equal(weights["model.layers.0.self_attn.q_proj.weight"],
                           base.state_dict()["model.layers.0.self_attn.q_proj.weight"])
