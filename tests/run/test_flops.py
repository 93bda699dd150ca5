"""perf/throughput and perf/mfu: FLOP counts against hand computation, the peak, and the logged metrics."""

import csv

import pytest
import torch

from clipo.models import build_tiny
from clipo.run.flops import (
    compute_dtype,
    forward_flops,
    matmul_parameters,
    measured_matmul_flops,
    peak_flops,
    step_passes,
    step_perf,
)


def test_forward_flops_by_hand_for_the_tiny_qwen2():
    model, tokenizer = build_tiny(seed=0)  # hidden 64, 2 layers, 4 heads of 16, 2 KV heads, MLP 128, tied head
    d, kv, inner, vocab = 64, 2 * 16, 128, len(tokenizer)
    per_layer = d * d + 2 * d * kv + d * d + 3 * d * inner  # q, k, v, o, gate/up/down
    assert matmul_parameters(model) == 2 * per_layer + vocab * d  # the tied head is a product, the embedding not
    lengths = torch.tensor([3, 5])
    expected = 2 * matmul_parameters(model) * 8 + 4 * 2 * 4 * 16 * (9 + 25)
    assert forward_flops(model, lengths) == pytest.approx(expected)


def test_step_passes_and_perf_by_hand():
    assert step_passes(update=True, epochs=2, collector_passes=2) == 1 + 6 + 2  # generation, update, pi_old + reference
    assert step_passes(update=False, epochs=2, collector_passes=0) == 1  # CLIPO's head warm-up (hf: no pass)
    perf = step_perf(tokens=300, step_flops=6e9, seconds=2.0, peak=1e10)
    assert float(perf["perf/throughput"]) == pytest.approx(150.0) and float(perf["perf/mfu"]) == pytest.approx(0.3)


def test_cpu_peak_is_the_measured_matmul_rate_at_the_compute_dtype():
    model, _ = build_tiny(seed=0)
    assert compute_dtype("bf16-mixed", model) is torch.bfloat16 and compute_dtype("32-true", model) is torch.float32
    rate = measured_matmul_flops("cpu", torch.float32)
    assert 1e8 < rate < 1e14 and peak_flops(torch.device("cpu"), torch.float32) == rate  # measured once, cached


def test_a_run_logs_throughput_and_mfu(tmp_path):
    from clipo.train import train
    from tests.conftest import TINY_OVERRIDES, compose_config

    cfg = compose_config(TINY_OVERRIDES + ["trainer.max_steps=1", "logger=csv"], output_dir=tmp_path)
    train(cfg)
    rows = [r for r in csv.DictReader(open(next(tmp_path.rglob("metrics.csv")))) if r.get("perf/mfu")]
    assert rows and 0 < float(rows[0]["perf/mfu"]) < 1 and float(rows[0]["perf/throughput"]) > 0


def test_measuring_the_matmul_rate_leaves_the_global_rng_alone():
    """A resumed run replays its sampling exactly only if nothing else draws from the global RNG."""
    from clipo.run.flops import measured_matmul_flops

    state = torch.get_rng_state()
    measured_matmul_flops("cpu", torch.float32, size=64, repeats=1)
    assert torch.equal(torch.get_rng_state(), state)
