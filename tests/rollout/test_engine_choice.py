"""`rollout.engine=auto`: vLLM where it is installed and runs the model (one process or several), hf otherwise;
the vllm engine's dtype follows the precision plan's sampling dtype."""

from __future__ import annotations

import importlib.util

import pytest

from clipo.models import load_model
from clipo.rollout.engine_choice import choose_engine, engine_dtype
from clipo.run.facts import training_processes

HAS_VLLM = importlib.util.find_spec("vllm") is not None
TINY_VLLM = {"num_attention_heads": 2, "num_key_value_heads": 1}  # head size 32: vLLM's CPU attention runs it


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny", tiny={})[0]  # head size 64 / 4 = 16


@pytest.fixture(scope="module")
def tiny_vllm():
    return load_model("tiny", tiny=TINY_VLLM)[0]


@pytest.fixture
def vllm_installed(monkeypatch):
    monkeypatch.setattr("clipo.rollout.engine_choice.vllm_available", lambda: True)


@pytest.mark.parametrize("name", ["hf", "vllm"])
def test_an_explicit_engine_is_kept(tiny, name):
    choice = choose_engine(name, tiny, processes=4)
    assert choice.value == name and "explicitly" in choice.reason


def test_auto_takes_hf_without_vllm(tiny_vllm, monkeypatch):
    monkeypatch.setattr("clipo.rollout.engine_choice.vllm_available", lambda: False)
    choice = choose_engine("auto", tiny_vllm, processes=1)
    assert choice.value == "hf" and "not installed" in choice.reason


def test_auto_takes_hf_for_a_head_size_vllm_cannot_run_on_cpu(tiny, vllm_installed):
    choice = choose_engine("auto", tiny, processes=1)
    assert choice.value == "hf" and "at least 32" in choice.reason and "has 16" in choice.reason


@pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed (./scripts/setup.sh --vllm installs it)")
def test_auto_takes_vllm_beside_each_rank_of_a_multi_process_run(tiny_vllm):
    choice = choose_engine("auto", tiny_vllm, processes=2)
    assert choice.value == "vllm" and "one engine beside each of the 2 training processes" in choice.reason


@pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed (./scripts/setup.sh --vllm installs it)")
def test_auto_takes_vllm_when_it_runs_the_model(tiny_vllm):
    choice = choose_engine("auto", tiny_vllm, processes=1)
    assert choice.value == "vllm" and "runs Qwen2ForCausalLM" in choice.reason  # model=tiny is a small Qwen2


@pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed (./scripts/setup.sh --vllm installs it)")
def test_auto_takes_hf_for_an_architecture_vllm_lacks(tiny_vllm, monkeypatch):
    monkeypatch.setattr(tiny_vllm.config, "architectures", ["NoSuchModelForCausalLM"])
    choice = choose_engine("auto", tiny_vllm, processes=1)
    assert choice.value == "hf" and "no implementation of NoSuchModelForCausalLM" in choice.reason


def test_training_processes_follow_the_launcher_then_the_trainer(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert training_processes({"devices": 2, "num_nodes": 2}) == 4
    assert training_processes({"devices": [0, 1]}) == 2
    assert training_processes({"devices": "auto"}) == 1
    monkeypatch.setenv("WORLD_SIZE", "3")  # torchrun
    assert training_processes({"devices": 1}) == 3


@pytest.mark.parametrize(("configured", "precision", "expected"), [
    (None, "bf16-mixed", "bfloat16"), (None, "bf16-true", "bfloat16"), (None, "bf16-copy", "bfloat16"),
    (None, "32", None), (None, 32, None), ("float32", "bf16-mixed", "float32"), ("bfloat16", "32", "bfloat16"),
])  # fmt: skip
def test_the_vllm_engine_samples_in_the_plans_sampling_dtype(configured, precision, expected):
    """The engine holds its weights in the dtype the precision plan samples in (`rollout.vllm.dtype` wins)."""
    from clipo.run.precision import explicit_plan

    assert engine_dtype(configured, explicit_plan(precision).sampling) == expected
    assert engine_dtype(configured, None) == configured  # no plan (evaluate.py): the policy's dtype
