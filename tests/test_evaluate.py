"""`evaluate(cfg)` end to end on the tiny model, the policy/checkpoint loaders, and every config composing."""

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from clipo.compose import compose
from clipo.data import bench_dir
from clipo.evaluate import evaluate, load_checkpoint_policy, load_policy
from clipo.evaluation.scoring import split_set_spec
from clipo.models import build_tiny
from clipo.registry import VERIFIERS, register_components
from clipo.train import train
from tests.conftest import CONFIG_DIR, tiny_parity_config

ROOT = Path(CONFIG_DIR).parent
BENCHMARKS = sorted(p.stem for p in (Path(CONFIG_DIR) / "benchmark").glob("*.yaml"))
SUITES = sorted(p.stem for p in (Path(CONFIG_DIR) / "suite").glob("*.yaml"))
TEST_SETS = ["gsm8k", "gsm_symbolic", "gsm_p1", "gsm_p2", "theoremqa", "mmlu2k", "truthfulqa", "commonsense_qa",
             "math", "aime", "aime2025", "amc", "math_perturb_simple", "math_perturb_hard"]
FAST = ["model=tiny", "max_rows=8", "max_new_tokens=8", "batch_size=64"]
needs_bench = pytest.mark.skipif(
    not (bench_dir() / "test").is_dir(),
    reason=f"benchmark parquet files not found under {bench_dir()}; set CLIPO_BENCH_DIR to the clipo-bench folder",
)


def compose_eval(overrides: list[str], output_dir: Path):
    """Compose configs/evaluate.yaml as `evaluate.py` would, with the run folder at `output_dir`."""
    return compose(overrides, output_dir, config_name="evaluate")


@needs_bench
def test_every_test_set_scores_on_the_tiny_model(tmp_path, capsys):
    results = evaluate(compose_eval(["suite=all", *FAST], tmp_path))
    assert list(results["sets"]) == TEST_SETS
    assert all(m["problems"] == 8 and 0 <= m["acc"] <= 1 for m in results["sets"].values())
    table = (tmp_path / "results.md").read_text()
    assert all(f"| {name} |" in table for name in TEST_SETS) and "| average |" in table
    assert table in capsys.readouterr().out
    with open(tmp_path / "results.csv") as file:
        assert [row["set"] for row in csv.DictReader(file)] == [*TEST_SETS, "average"]
    # gsm8k has three twins, math two: five gaps
    assert set(results["gaps"]) == {("gsm8k", t) for t in ("gsm_symbolic", "gsm_p1", "gsm_p2")} | {
        ("math", "math_perturb_simple"), ("math", "math_perturb_hard")}
    lines = [json.loads(line) for line in (tmp_path / "responses.jsonl").read_text().splitlines()]
    assert len(lines) == 14 * 8
    assert set(lines[0]) == {"set", "index", "sample", "response", "answer", "ground_truth", "correct"}


def test_sampled_arith_twins_report_pass_and_maj(tmp_path):
    cfg = compose_eval(["suite=arith", *FAST, "max_rows=4", "n=2", "temperature=1.0", "ks=[1,2]"], tmp_path)
    results = evaluate(cfg)
    metrics = results["sets"]["arith_p1"]
    assert {"acc", "pass@1", "pass@2", "maj@1", "maj@2"} <= metrics.keys()
    assert metrics["pass@1"] == pytest.approx(metrics["acc"])  # unbiased pass@1 is mean@n
    assert metrics["pass@2"] >= metrics["acc"]
    assert len(results["gaps"]) == 3 and "acc" in results["average"]
    lines = (tmp_path / "responses.jsonl").read_text().splitlines()
    assert len(lines) == 4 * 4 * 2  # 4 sets x 4 problems x 2 samples


def test_set_without_a_verifier_fails_before_the_model_loads(tmp_path, monkeypatch):
    monkeypatch.setattr("clipo.evaluate.load_policy", lambda cfg: pytest.fail("the model must not load"))
    with pytest.raises(ValueError, match="arith_p1 name no verifier"):
        evaluate(compose_eval(["suite=arith", *FAST, "~sets.arith_p1.verifier"], tmp_path))


def _assert_same_weights(model, reference):
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)


def test_exported_policy_folder_is_scored(tmp_path):
    policy, tokenizer = build_tiny(seed=7)
    policy.save_pretrained(tmp_path / "policy")
    tokenizer.save_pretrained(tmp_path / "policy")
    cfg = compose_eval(["suite=arith", *FAST, "max_rows=2", f"policy_path={tmp_path / 'policy'}"], tmp_path / "run")
    model, _ = load_policy(cfg)
    _assert_same_weights(model, policy)
    assert set(evaluate(cfg)["sets"]) == {"arith", "arith_symbolic", "arith_p1", "arith_p2"}


def test_checkpoint_policy_weights_are_loaded(tmp_path):
    trained, _ = build_tiny(seed=3)
    state = {f"policy.{k}": v for k, v in trained.state_dict().items()} | {"contrastive.head.weight": torch.ones(2)}
    torch.save({"state_dict": state, "global_step": 5}, tmp_path / "last.ckpt")
    cfg = compose_eval(["suite=arith", *FAST, "max_rows=2", f"ckpt_path={tmp_path / 'last.ckpt'}"], tmp_path / "run")
    model, _ = load_policy(cfg)  # model=tiny builds seed 0; the checkpoint's seed-3 weights replace them
    _assert_same_weights(model, trained)
    assert (Path(evaluate(cfg)["output_dir"]) / "results.md").is_file()


def test_a_training_checkpoint_is_scored_without_repeating_model(parity_verifier, tmp_path):
    """The run's resolved config travels in the checkpoint: with the default model (SmolLM2) selected,
    a tiny run's checkpoint still builds the tiny model it trained."""
    _, objects = train(tiny_parity_config(tmp_path / "train", "data.val=null", "trainer.max_steps=1"))
    checkpoint = tmp_path / "train" / "checkpoints" / "last.ckpt"
    assert torch.load(checkpoint, weights_only=True)["clipo"]["config"]["model"]["name"] == "tiny"
    assert (tmp_path / "train" / "policy" / "checksums.json").is_file()  # the export is verified when scored
    cfg = compose_eval(["suite=arith", "max_rows=2", "max_new_tokens=4", f"ckpt_path={checkpoint}"], tmp_path / "run")
    assert cfg.model.name == "smollm2_135m"
    model, _ = load_policy(cfg)
    _assert_same_weights(model, objects["module"].policy)
    assert set(evaluate(cfg)["sets"]) == {"arith", "arith_symbolic", "arith_p1", "arith_p2"}


def test_bad_checkpoints_and_choices_fail_clearly(tmp_path):
    model, _ = build_tiny(seed=0)
    torch.save({"state_dict": {"head.weight": torch.ones(2)}}, tmp_path / "head_only.ckpt")
    with pytest.raises(ValueError, match="no `policy.` weights"):
        load_checkpoint_policy(model, tmp_path / "head_only.ckpt")
    bigger, _ = build_tiny(seed=0, hidden_size=32, intermediate_size=64)
    torch.save({"state_dict": {f"policy.{k}": v for k, v in bigger.state_dict().items()}}, tmp_path / "other.ckpt")
    with pytest.raises((ValueError, RuntimeError), match="size mismatch|does not fit"):
        load_checkpoint_policy(model, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="not both"):
        load_policy(compose_eval(["model=tiny", "ckpt_path=a.ckpt", "policy_path=b"], tmp_path))
    with pytest.raises(ValueError, match="outside the suite"):
        evaluate(compose_eval(["suite=arith", *FAST, "only=[gsm8k]"], tmp_path))


@pytest.mark.parametrize("name", BENCHMARKS)
def test_every_benchmark_config_composes(name, tmp_path):
    cfg = compose_eval(["~suite", f"+benchmark@sets.{name}={name}"], tmp_path)
    assert list(cfg.sets) == [name]
    spec = OmegaConf.to_container(cfg.sets[name], resolve=True)
    kwargs, verifier, twins = split_set_spec(spec)
    register_components()
    assert verifier in VERIFIERS and set(twins) <= set(BENCHMARKS)
    assert kwargs["source"] in ("arith", "parquet")
    if kwargs["source"] == "parquet" and (bench_dir() / "test").is_dir():
        assert Path(kwargs["path"]).is_file(), kwargs["path"]
    if spec.get("hub"):
        assert split_set_spec(spec, use_hub=True)[0]["source"] == "hub"


@pytest.mark.parametrize("suite", SUITES)
def test_every_suite_composes(suite, tmp_path):
    cfg = compose_eval([f"suite={suite}"], tmp_path)
    assert set(cfg.sets) <= set(BENCHMARKS) and len(cfg.sets) >= 4
    OmegaConf.to_container(cfg.sets, resolve=True)


def test_script_does_not_shadow_packages_named_evaluate(tmp_path):
    # run the file as a script (src/clipo/ first on sys.path); afterwards `evaluate` must not resolve to it
    code = (
        "import importlib.util, runpy, sys; script = sys.argv[1]; sys.argv = [script, '--cfg', 'job'];"
        "runpy.run_path(script, run_name='__main__'); spec = importlib.util.find_spec('evaluate');"
        "print('SHADOWED' if spec and spec.origin and spec.origin.endswith('clipo/evaluate.py') else 'OK')"
    )
    script = str(ROOT / "src" / "clipo" / "evaluate.py")
    # this checkout's package after the script folder (not whichever clipo is installed)
    python_path = f"{ROOT / 'src' / 'clipo'}:{ROOT / 'src'}"
    env = {"PYTHONPATH": python_path, "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code, script], capture_output=True, text=True, env=env, cwd=tmp_path,
                         check=False)
    assert out.stdout.strip().endswith("OK"), out.stdout + out.stderr
    assert "task_name: evaluate" in out.stdout  # Hydra printed the composed config


def test_lora_checkpoint_is_loaded_onto_the_adapted_model(tmp_path):
    from clipo.models import apply_lora

    trained = apply_lora(build_tiny(seed=0)[0], rank=4, alpha=8)
    with torch.no_grad():
        for name, param in trained.named_parameters():
            if "lora_B" in name:
                param.fill_(0.1)
    adapter = {f"policy.{k}": v for k, v in trained.named_parameters() if v.requires_grad}  # as training saves it
    torch.save({"state_dict": adapter}, tmp_path / "last.ckpt")
    cfg = compose_eval(["suite=arith", *FAST, "max_rows=2", f"ckpt_path={tmp_path / 'last.ckpt'}",
                        "model.lora_rank=4", "model.lora_alpha=8"], tmp_path / "run")
    model, _ = load_policy(cfg)
    _assert_same_weights(model, trained)


TINY_VLLM = ["model.tiny.num_attention_heads=2", "model.tiny.num_key_value_heads=1"]  # vLLM's CPU head size >= 32


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed (./scripts/setup.sh --vllm)")
def test_vllm_engine_scores_the_same_greedy_responses_as_hf(tmp_path):
    responses = {}
    for engine in ("hf", "vllm"):
        out = tmp_path / engine
        results = evaluate(compose_eval(["suite=arith", *FAST, "max_rows=4", *TINY_VLLM, f"rollout.engine={engine}"], out))
        responses[engine] = [json.loads(line) for line in (out / "responses.jsonl").read_text().splitlines()]
        assert all(m["problems"] == 4 for m in results["sets"].values())
    assert responses["vllm"] == responses["hf"]


def test_vllm_engine_the_model_cannot_run_fails_before_it_loads(tmp_path, monkeypatch):
    monkeypatch.setattr("clipo.evaluate.load_policy", lambda cfg: pytest.fail("the model must not load"))
    problem = "head size >= 32" if importlib.util.find_spec("vllm") else "needs vLLM"
    with pytest.raises(ValueError, match=problem):
        evaluate(compose_eval(["suite=arith", *FAST, "rollout.engine=vllm"], tmp_path))


def test_a_damaged_checkpoint_or_policy_is_named_before_it_is_scored(parity_verifier, tmp_path):
    """Before: a checkpoint cut short ended in PytorchStreamReader's message, a truncated model.safetensors in a
    SafetensorError, and a bit-flipped checkpoint was scored as if whole. evaluate.py's main exits 2 on these."""
    from clipo.run.integrity import write_checksums
    from tests.run.test_resume import flip_bytes

    trained, tokenizer = build_tiny(seed=3)
    torch.save({"state_dict": {f"policy.{k}": v for k, v in trained.state_dict().items()}}, tmp_path / "last.ckpt")
    flip_bytes(tmp_path / "last.ckpt")
    with pytest.raises(ValueError, match=r"last.ckpt is damaged: its entry .* does not match its CRC-32: .*; score "
                                         r"another checkpoint of the run"):
        load_policy(compose_eval(["model=tiny", f"ckpt_path={tmp_path / 'last.ckpt'}"], tmp_path / "run"))
    (tmp_path / "cut.ckpt").write_bytes((tmp_path / "last.ckpt").read_bytes()[:5000])
    with pytest.raises(ValueError, match=r"cut.ckpt is damaged: not a whole zip archive as torch.save writes"):
        load_policy(compose_eval(["model=tiny", f"ckpt_path={tmp_path / 'cut.ckpt'}"], tmp_path / "run"))
    trained.save_pretrained(tmp_path / "policy")
    tokenizer.save_pretrained(tmp_path / "policy")
    write_checksums(tmp_path / "policy")  # as train.py's export does
    weights = tmp_path / "policy" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])
    with pytest.raises(ValueError, match=r"policy_path=.*policy is damaged: model.safetensors: its size or CRC-32 "
                                         r"differs .*; export it again"):
        load_policy(compose_eval(["model=tiny", f"policy_path={tmp_path / 'policy'}"], tmp_path / "run"))
