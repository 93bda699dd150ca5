"""The precision plan: `auto` per phase from the machine and the probe, explicit values winning, the
run's first lines and summary.json; and the probe itself (short, restores the thread count)."""

from __future__ import annotations

import json

import pytest
import torch

from clipo.config import ConfigError, validate_config
from clipo.run.precision import BF16_WINS, choose_plan, explicit_plan
from clipo.run.precision_probe import Probe, ProbeShapes, measure
from tests.conftest import compose_config, tiny_parity_config

ICE_LAKE = frozenset("fpu sse4_2 avx2 avx512f avx512bw avx512vl avx512_vnni".split())  # AVX-512, no bf16
SAPPHIRE_RAPIDS = ICE_LAKE | {"avx512_bf16", "amx_bf16", "amx_tile"}
ZEN4 = ICE_LAKE | {"avx512_bf16"}
FAST = Probe(sampling=0.4, training=0.55, seconds=1.0, detail="stand-in")  # as measured on an AMX Xeon


def probe(sampling: float = 0.4, training: float = 0.55) -> Probe:
    return Probe(sampling, training, 1.0, "stand-in")


def never() -> Probe:
    raise AssertionError("the probe must not run here")


def plan(requested="auto", accelerator="auto", cuda_bf16=None, flags=SAPPHIRE_RAPIDS, processes=1, sharded=False,
         measured=FAST):
    return choose_plan(requested, accelerator, cuda_bf16, flags, processes, sharded,
                       never if measured is None else lambda: measured)


@pytest.mark.parametrize(("accelerator", "cuda_bf16", "flags"), [
    ("auto", None, ICE_LAKE),  # emulated bf16 is 3x slower than fp32 there
    ("auto", None, frozenset()),  # flags unreadable (or an arm CPU without them)
    ("gpu", False, ZEN4),  # a V100/T4: no bf16, and 16-mixed is never picked
    ("cpu", True, ICE_LAKE),  # the CPU was asked for although a GPU is visible
    ("mps", None, ZEN4),
])  # fmt: skip
def test_auto_stays_float32_without_bf16_units_and_measures_nothing(accelerator, cuda_bf16, flags):
    chosen = plan(accelerator=accelerator, cuda_bf16=cuda_bf16, flags=flags, measured=None)
    assert (chosen.sampling, chosen.training, chosen.lightning) == ("float32", "float32", "32-true")
    assert not chosen.working_copy and not chosen.sampler_copy and chosen.probe is None
    assert chosen.reason.startswith("auto: ")


@pytest.mark.parametrize("flags", [SAPPHIRE_RAPIDS, ZEN4, frozenset({"amx_bf16"})])
def test_auto_on_a_cpu_with_bf16_units_follows_the_probe(flags):
    """Both phases measured faster in bf16: the working copy trains and samples, Lightning does not autocast."""
    chosen = plan(flags=flags)
    assert (chosen.sampling, chosen.training, chosen.lightning, chosen.value) == (
        "bfloat16", "bfloat16", "32-true", "bf16-copy")
    assert chosen.working_copy and chosen.sampler_copy and chosen.probe is FAST
    assert "0.40 of fp32's time" in chosen.sampling_reason and "0.55 of fp32's time" in chosen.training_reason


def test_each_phase_is_decided_on_its_own():
    """A phase where bf16 measures no faster than `BF16_WINS` of fp32 stays float32 (e.g. the tiny model)."""
    slow_training = plan(measured=probe(0.5, BF16_WINS + 0.05))
    assert (slow_training.sampling, slow_training.training, slow_training.lightning) == ("bfloat16", "float32", "32-true")
    assert slow_training.sampler_copy and not slow_training.working_copy  # hf samples from a copy of its own
    assert f"above {BF16_WINS}" in slow_training.training_reason
    slow_sampling = plan(measured=probe(1.4, 0.5))
    assert (slow_sampling.sampling, slow_sampling.training) == ("float32", "bfloat16")
    assert slow_sampling.working_copy and not slow_sampling.sampler_copy  # hf samples from the float32 master
    assert plan(measured=probe(1.5, 1.6)).value == "32-true"


def test_several_processes_train_under_autocast_and_a_sharded_policy_samples_itself():
    """The copy's gradients would bypass DDP's reduction and ZeRO/FSDP's shards: autocast there; a sharded
    policy has no copy to sample from (hf samples its own gathered weights, without autocast)."""
    ddp = plan(processes=2, measured=None)  # each rank would measure its own ratios: the CPU kind decides
    assert (ddp.lightning, ddp.training, ddp.working_copy, ddp.sampler_copy) == ("bf16-mixed", "bfloat16", False, True)
    assert "2 processes decide from the CPU kind" in ddp.reason
    assert plan(processes=2, flags=ICE_LAKE, measured=None).value == "32-true"
    sharded = plan(processes=2, sharded=True, measured=None)
    assert (sharded.lightning, sharded.sampling, sharded.sampler_copy) == ("bf16-mixed", "bfloat16", False)
    assert "hf from the policy's own weights" in sharded.lines()[1]


def test_a_cuda_device_with_bf16_trains_under_autocast_without_copies():
    """Lightning moves the policy to the GPU after the builders made it: copies stay a CPU matter (vllm still
    samples in bf16), and bf16-copy is refused there."""
    chosen = plan(cuda_bf16=True, flags=ICE_LAKE, measured=None)
    assert (chosen.lightning, chosen.sampling, chosen.sampler_copy, chosen.working_copy) == (
        "bf16-mixed", "bfloat16", False, False)
    assert not plan("bf16-mixed", cuda_bf16=True, measured=None).sampler_copy
    with pytest.raises(ValueError, match="one process on the CPU"):
        plan("bf16-copy", cuda_bf16=True, measured=None)
    assert plan("bf16-copy", accelerator="cpu", cuda_bf16=True, measured=None).working_copy


@pytest.mark.parametrize(("requested", "lightning", "sampling", "copy"), [
    ("32", "32", "float32", False), (32, "32", "float32", False), ("bf16-mixed", "bf16-mixed", "bfloat16", False),
    ("bf16-true", "bf16-true", "bfloat16", False), ("bf16-copy", "32-true", "bfloat16", True),
    ("16-mixed", "16-mixed", "policy", False),
])  # fmt: skip
def test_explicit_precision_wins(requested, lightning, sampling, copy):
    for machine in ({"flags": ICE_LAKE}, {"flags": SAPPHIRE_RAPIDS}, {"cuda_bf16": True, "accelerator": "cpu"}):
        chosen = plan(requested, measured=None, **machine)
        assert (chosen.lightning, chosen.sampling, chosen.working_copy) == (lightning, sampling, copy)
        assert "explicitly" in chosen.reason
    # bf16-mixed: trains under autocast, samples from a copy (never through per-step autocast); bf16-true
    # holds the policy in bf16 and samples from it
    assert explicit_plan("bf16-mixed").sampler_copy and not explicit_plan("bf16-true").sampler_copy


def test_the_working_copy_runs_in_one_process(tmp_path):
    with pytest.raises(ValueError, match="trains in one process on the CPU"):
        explicit_plan("bf16-copy", processes=2)
    cfg = compose_config(["model=tiny", "trainer.precision=bf16-copy", "trainer.accelerator=cpu", "trainer.devices=2",
                          "strategy=ddp"], output_dir=tmp_path)
    with pytest.raises(ConfigError, match="bf16-copy trains in one process, this run has 2"):
        validate_config(cfg)
    validate_config(compose_config(["model=tiny", "trainer.precision=bf16-copy"], output_dir=tmp_path))


def test_the_plan_says_what_it_chose_per_phase_and_why():
    chosen = plan()
    first, per_phase, measured = chosen.lines()
    assert first.startswith("precision bf16-copy: sampling: auto: the CPU has avx512_bf16, amx_bf16")
    assert "sampling bfloat16 (hf from a bf16 copy cast once per update), training bfloat16" in per_phase
    assert "float32 master + bf16 working copy" in per_phase and "bf16 took 0.40 of fp32's time" in measured
    record = chosen.as_dict()
    assert json.loads(json.dumps(record)) == record  # summary.json takes it as it is
    assert record["precision"] == "bf16-copy" and record["training_bf16_over_fp32"] == 0.55


def test_the_probe_measures_the_run_shapes_on_one_thread_and_restores_the_threads():
    from clipo.models import load_config

    torch.set_num_threads(2)
    try:
        result = measure(load_config("tiny", tiny={}), ProbeShapes.of_run(rollouts=8, micro_tokens=4096), repeats=1)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
    assert 0 < result.sampling < 100 and 0 < result.training < 100
    assert "8 x (16 + 4) tokens" in result.detail and "over 128 tokens" in result.detail  # capped at 128


def test_train_reports_the_plan_in_its_first_lines_and_summary(parity_verifier, tmp_path, monkeypatch):
    """auto on a (mocked) CPU with bf16 units and a probe that finds bf16 faster: the run trains on the working
    copy, Lightning runs 32-true, and summary.json keeps every phase's choice and the measurement."""
    from clipo.train import train

    monkeypatch.setattr("clipo.run.runtime.detect_cuda_bf16", lambda: None)
    monkeypatch.setattr("clipo.run.runtime.detect_cpu_flags", lambda: ZEN4)
    monkeypatch.setattr("clipo.run.runtime._probe", lambda cfg, processes: FAST)
    _, objects = train(tiny_parity_config(tmp_path, "trainer.max_steps=1", "data.val=null", "trainer.precision=auto",
                                          "rollout.engine=hf"))
    assert objects["trainer"].precision == "32-true"
    module = objects["module"]
    assert module.updater.forward_model is not module.policy  # the working copy
    assert module.collector.engine.policy is module.updater.forward_model  # hf samples from it too
    runtime = json.loads((tmp_path / "summary.json").read_text())["runtime"]
    assert runtime["precision"] == "bf16-copy" and runtime["precision_sampling"] == "bfloat16"
    assert runtime["precision_training"] == "bfloat16" and runtime["sampling_bf16_over_fp32"] == 0.4
    assert "avx512_bf16" in runtime["precision_reason"]


def test_resolve_measures_the_configured_model_at_the_configured_shapes(tmp_path, monkeypatch):
    """On a (mocked) CPU with bf16 units the probe runs the config's own model at its rollouts per step; an
    explicit precision measures nothing."""
    from clipo.run.runtime import resolve_precision

    monkeypatch.setattr("clipo.run.runtime.detect_cuda_bf16", lambda: None)
    monkeypatch.setattr("clipo.run.runtime.detect_cpu_flags", lambda: SAPPHIRE_RAPIDS)
    cfg = compose_config(["model=tiny", "trainer.precision=auto", "data.prompts_per_step=3", "rollout.group_size=4"],
                         output_dir=tmp_path)
    chosen = resolve_precision(cfg)
    assert chosen.probe is not None and "Qwen2ForCausalLM" in chosen.probe.detail
    assert "decoding 12 x (16 + 4) tokens" in chosen.probe.detail
    cfg.trainer.precision = "32"
    assert resolve_precision(cfg).probe is None
