"""Sharded training on CPU processes (gloo): DeepSpeed ZeRO-2, ZeRO-3 and FSDP2.

Two launches (`tests/sharded_replay.py`) prove the numbers: one process on the global batch (reward mode
for 2 steps, loss mode for 1), and 2 processes with DDP, ZeRO-2, ZeRO-3 and FSDP (reward 2 steps, resumed
from the step-1 checkpoint, loss mode), plus ZeRO-3 under bf16-mixed. Each training runs the same fixed
global batch of rollouts (`tests/ddp_replay.py`) with plain SGD, whose step is proportional to the
gradient, so any wrongly reduced gradient shows.

A third launch (`tests/sharded_runs.py`) proves the paths: real runs, each rank sampling its own prompts,
so the ranks' micro-batches, refills and validation batches differ, under every strategy, 4 RL steps with
validation before and after, token-budget micro-batches, dynamic sampling, CLIPO's reward and loss modes,
and a ZeRO-3 resume. A collective that one rank makes and the other does not fails or hangs these.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clipo.builders import build_strategy
from clipo.run.strategies import FSDP2Strategy
from tests.conftest import compose_config, fresh_shell_env

pytestmark = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                reason="deepspeed is not installed (scripts/setup.sh --dev installs it)")

REPLAY = Path(__file__).resolve().parents[1] / "sharded_replay.py"
RUNS = Path(__file__).resolve().parents[1] / "sharded_runs.py"
REAL = ["ddp-reward", "zero2-loss", "zero3-reward", "zero3-reward-resume", "fsdp-loss"]
SHARDED = ["zero2", "zero3", "fsdp"]
ONE_PROCESS = ["one-reward", "one-loss", "one-lora"]
TWO_PROCESSES = ["ddp-reward", "ddp-loss", *(f"{s}-{kind}" for s in SHARDED for kind in ("reward", "resume", "loss")),
                 "zero3-bf16", "zero2-lora"]
# fp32 sums in another order (gradient reductions, sharded parameters): far below one SGD step's change
TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}
HEAD_LR = 1e-3  # contrastive.head_pooler_optimizer.lr, the head's own AdamW (configs/train.yaml)


def _launch(out_dir: Path, devices: int, plans: list[str]) -> None:
    result = subprocess.run([sys.executable, str(REPLAY), str(out_dir), str(devices), *plans], cwd=out_dir,
                            capture_output=True, text=True, timeout=600, env=fresh_shell_env())
    assert result.returncode == 0, result.stderr[-6000:]


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory) -> dict[str, dict]:
    """Per plan: each rank's record, and rank 0's final weights."""
    out_dir = tmp_path_factory.mktemp("real")
    result = subprocess.run([sys.executable, str(RUNS), str(out_dir), *REAL], cwd=out_dir, capture_output=True,
                            text=True, timeout=900, env=fresh_shell_env())
    assert result.returncode == 0, result.stderr[-6000:]
    return {name: {"ranks": [json.loads((out_dir / f"{name}.rank{r}.json").read_text()) for r in (0, 1)],
                   "weights": torch.load(out_dir / f"{name}.pt")} for name in REAL}


def test_every_strategy_trains_on_real_rollouts_with_validation(real_runs):
    for name, run in real_runs.items():
        steps = 2 if name.endswith("-resume") else 4
        for rank in run["ranks"]:
            assert rank["steps"] == steps and rank["finite"], name
            assert len(rank["passes"]) >= steps  # the update's micro-batching (and a collector pass in loss mode)
        first, second = run["ranks"]
        # validation before and after: 5 + 3 problems, 2 a batch, split over the ranks: 3 batches and 2
        assert first["val_batches"] == [3, 3] and second["val_batches"] == [2, 2], name
        # every rank ran as many passes, whatever its own rollouts needed
        assert [total for _, total in first["passes"]] == [total for _, total in second["passes"]], name
    # what makes the test: the ranks' rollouts needed different numbers of passes, and dynamic sampling refilled
    assert any(a[0] != b[0] for run in real_runs.values() for a, b in zip(*(r["passes"] for r in run["ranks"])))
    assert any(count > 1 for run in real_runs.values() for rank in run["ranks"] for count in rank["generations"])


def test_zero3_trains_on_real_rollouts_as_ddp_does(real_runs):
    """Same seed, same prompts: the rollouts DDP and ZeRO-3 sample are the same while their weights agree to
    float rounding (a sampled token flipped by it would show as a large difference, at odds of ~1e-4)."""
    for name, weight in real_runs["ddp-reward"]["weights"].items():
        torch.testing.assert_close(real_runs["zero3-reward"]["weights"][name], weight, **TOLERANCE, msg=name)


def test_zero3_resumed_on_real_rollouts_continues_exactly(real_runs):
    straight, resumed = real_runs["zero3-reward"], real_runs["zero3-reward-resume"]
    for name, weight in straight["weights"].items():
        torch.testing.assert_close(resumed["weights"][name], weight, **TOLERANCE, msg=name)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, dict]:
    out_dir = tmp_path_factory.mktemp("sharded")
    _launch(out_dir, 1, ONE_PROCESS)
    _launch(out_dir, 2, TWO_PROCESSES)
    return {name: torch.load(out_dir / f"{name}.pt", weights_only=False) for name in ONE_PROCESS + TWO_PROCESSES}


def _assert_same_weights(got: dict, expected: dict, where: str) -> None:
    assert got.keys() == expected.keys(), where
    for name, weight in expected.items():
        torch.testing.assert_close(got[name], weight, **TOLERANCE, msg=f"{where}: {name}")


@pytest.mark.parametrize("strategy", SHARDED)
@pytest.mark.parametrize("mode", ["reward", "loss"])
def test_sharded_rl_step_equals_ddp_and_one_process(runs, strategy, mode):
    one, ddp, sharded = runs[f"one-{mode}"], runs[f"ddp-{mode}"], runs[f"{strategy}-{mode}"]
    assert len(sharded["steps"]) == len(one["steps"])
    for step, expected in enumerate(one["steps"]):
        _assert_same_weights(sharded["steps"][step], expected, f"{strategy}/{mode} step {step + 1} vs one process")
        _assert_same_weights(sharded["steps"][step], ddp["steps"][step], f"{strategy}/{mode} step {step + 1} vs ddp")
    for key in ("actor/loss", "actor/grad_norm", "train/reward"):
        torch.testing.assert_close(sharded["metrics"][key], one["metrics"][key], rtol=1e-4, atol=1e-7, msg=key)
    assert one["metrics"]["actor/grad_norm"] > 0.1  # SGD at lr 0.5: the step moves the weights far beyond the tolerance
    # the head learns as in one process: each rank weighs its loss by its share of the anchors, so the ranks'
    # averaged gradient is one process's. Measured (2 Xeon cores with AMX, fp32): step 1 within 3e-6 of the
    # largest element (sums in another order), step 2 within 1.4e-5 (it starts from weights that AdamW moved
    # apart, below); with each rank's loss weighted 1 instead of its anchor share, step 1 is 0.5 of it apart
    assert len(sharded["head_grads"]) == len(ddp["head_grads"]) == len(one["head_grads"]) == len(one["steps"])
    for step, expected in enumerate(one["head_grads"]):
        for name, grad in expected.items():
            scale = {"rtol": 1e-5, "atol": 1e-4 * float(grad.abs().max())}
            for run, label in ((ddp, "ddp"), (sharded, strategy)):
                where = f"{label} head gradient {name}, step {step + 1}"
                torch.testing.assert_close(run["head_grads"][step][name], grad, **scale,
                                           msg=lambda detail, where=where: f"{where}: {detail}")
    # AdamW turns a rounding difference in a near-zero gradient into a step of up to about lr either way
    adam = {"rtol": 0.0, "atol": 2 * HEAD_LR * len(one["steps"])}
    for name, value in one["heads"][-1]["state"].items():
        torch.testing.assert_close(ddp["heads"][-1]["state"][name], value, **adam, msg=f"ddp head {name}")
        torch.testing.assert_close(sharded["heads"][-1]["state"][name], value, **adam, msg=f"head {name}")


@pytest.mark.parametrize("strategy", SHARDED)
def test_resume_from_the_strategys_own_checkpoint_continues_exactly(runs, strategy):
    straight, resumed = runs[f"{strategy}-reward"], runs[f"{strategy}-resume"]
    checkpoint = Path(straight["run_dir"]) / "checkpoints" / "step_000001.ckpt"
    assert checkpoint.is_dir(), "DeepSpeed and FSDP write a sharded checkpoint folder"
    assert len(resumed["steps"]) == 1  # only step 2 ran
    _assert_same_weights(resumed["steps"][0], straight["steps"][1], f"{strategy} resumed step 2")
    for name, value in straight["heads"][1]["state"].items():
        torch.testing.assert_close(resumed["heads"][0]["state"][name], value, **TOLERANCE, msg=name)


@pytest.mark.parametrize("strategy", ["zero3", "fsdp"])
def test_generation_and_the_vllm_push_see_whole_weights_and_leave_shards(runs, strategy):
    run = runs[f"{strategy}-reward"]
    assert run["whole_in_generation"] == [True, True]  # the hf engine sampled from gathered parameters
    assert run["sharded_after_generation"] == [True, True]
    push = run["vllm_push"]
    assert push["sharded_before"] and push["sharded_after"]
    final = run["steps"][-1]
    assert set(push["weights"]) <= set(final) and "model.embed_tokens.weight" in push["weights"]
    for name, tensor in push["weights"].items():
        torch.testing.assert_close(tensor, final[name], msg=name)


@pytest.mark.parametrize("strategy", SHARDED)
def test_exported_policy_is_one_folder_that_transformers_loads(runs, strategy):
    from transformers import AutoModelForCausalLM

    run = runs[f"{strategy}-reward"]
    model = AutoModelForCausalLM.from_pretrained(Path(run["run_dir"]) / "policy")
    _assert_same_weights(model.state_dict(), run["steps"][-1], f"{strategy} export")


def test_zero3_bf16_casts_the_policy_but_the_head_stays_float32_on_its_own_optimizer(runs):
    head = runs["zero3-bf16"]["heads"][-1]
    assert head["policy_dtype"] == "torch.bfloat16"
    assert head["dtypes"] == ["torch.float32"] and not head["sharded"] and head["in_head_optimizer"]


def test_fsdp_strategy_builds(tmp_path):
    strategy = build_strategy(compose_config(["strategy=fsdp"], output_dir=tmp_path))
    assert isinstance(strategy, FSDP2Strategy)


@pytest.mark.parametrize("strategy", SHARDED)
def test_evaluate_reads_the_policy_of_a_sharded_checkpoint_folder(runs, strategy, tmp_path):
    from clipo.compose import compose
    from clipo.evaluate import evaluate, load_policy

    run = runs[f"{strategy}-reward"]
    checkpoint = Path(run["run_dir"]) / "checkpoints" / "step_000001.ckpt"
    cfg = compose(["suite=arith", "max_rows=2", "max_new_tokens=4", f"ckpt_path={checkpoint}"], tmp_path,
                  config_name="evaluate")
    model, _ = load_policy(cfg)  # the tiny model the run trained (from the checkpoint's config), step 1's weights
    _assert_same_weights(model.state_dict(), run["steps"][0], f"{strategy} checkpoint")
    if strategy == "zero3":  # scoring itself is the same for every checkpoint kind: once is enough
        assert set(evaluate(cfg)["sets"]) == {"arith", "arith_symbolic", "arith_p1", "arith_p2"}


def test_lora_under_zero2_trains_like_one_process(runs):
    one, zero2 = runs["one-lora"], runs["zero2-lora"]
    assert any("lora_B" in name for name in one["steps"][0])
    _assert_same_weights(zero2["steps"][0], one["steps"][0], "zero2 LoRA")
    assert one["metrics"]["actor/grad_norm"] > 0


@pytest.mark.parametrize("strategy", ["deepspeed_zero3", "fsdp"])
def test_lora_under_zero3_or_fsdp_fails_before_loading_and_names_the_strategy_to_use(strategy, tmp_path):
    from clipo.config import ConfigError, validate_config

    cfg = compose_config([f"strategy={strategy}", "model=tiny", "model.lora_rank=4"], output_dir=tmp_path)
    with pytest.raises(ConfigError, match="use strategy=deepspeed_zero2 or strategy=ddp"):
        validate_config(cfg)


def test_offload_on_cpu_processes_names_the_strategy_to_use(tmp_path):
    from clipo.config import ConfigError, validate_config

    cfg = compose_config(["strategy=deepspeed_zero2_offload", "trainer.accelerator=cpu"], output_dir=tmp_path)
    with pytest.raises(ConfigError, match="use strategy=deepspeed_zero2$"):
        validate_config(cfg)


def test_two_nodes_of_one_process_each_train_like_one_process(runs, tmp_path):
    """`trainer.num_nodes=2 trainer.devices=1`, both "nodes" on this machine, started with the variables
    torchrun sets on each node (NODE_RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT): Lightning joins them
    into one world of 2 and ZeRO-3 shards over it."""
    env = fresh_shell_env(MASTER_ADDR="127.0.0.1", WORLD_SIZE="2", LOCAL_RANK="0")
    nodes = [subprocess.Popen([sys.executable, str(REPLAY), str(tmp_path), "1", "nodes-zero3"], cwd=tmp_path,
                              env={**env, "NODE_RANK": str(rank)}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True) for rank in (0, 1)]
    errors = [node.communicate(timeout=600)[1] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], errors[0][-3000:] + errors[1][-3000:]
    run = torch.load(tmp_path / "nodes-zero3.pt", weights_only=False)
    _assert_same_weights(run["steps"][0], runs["one-reward"]["steps"][0], "2 nodes x 1 process, ZeRO-3")
