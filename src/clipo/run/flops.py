"""Throughput and model FLOPs utilisation of an RL step (`perf/throughput`, `perf/mfu`).

As verl defines them: throughput is the step's prompt + response tokens per second per device;
the model FLOPs of a forward over a sequence of s tokens are 2 x (matmul parameters) x s plus
4 x layers x (heads x head size) x s^2 for attention (verl's `FlopsCounter`, no causal halving),
a training pass (forward + backward) three times that. The peak is the device's nominal dense
bf16 rate on a known GPU, else the matrix-product rate measured once in this process at the
policy's precision (a CPU has no nominal figure worth comparing against).
"""

from __future__ import annotations

import time
from functools import lru_cache

import torch

NOMINAL_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0}


def matmul_parameters(model: torch.nn.Module) -> int:
    """Weights that a token passes through as matrix products (every `nn.Linear`; embeddings are lookups)."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def forward_flops(model: torch.nn.Module, lengths: torch.Tensor, matmul_params: int | None = None) -> float:
    """Model FLOPs of one forward over sequences of `lengths` [N] tokens each (`matmul_params`: counted
    beforehand, see `rl_step_perf`)."""
    config = model.config
    layers, heads = config.num_hidden_layers, config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    s = lengths.double()
    matmul_params = matmul_parameters(model) if matmul_params is None else matmul_params
    return float(2 * matmul_params * s.sum() + 4 * layers * heads * head_dim * (s * s).sum())


def step_passes(update: bool, epochs: int, collector_passes: int) -> int:
    """Forward-equivalents of an RL step over its rollouts: generation (1), the update (3 per epoch),
    and the collector's no-grad passes (pi_old, the reference, hidden states the engine lacks)."""
    return 1 + collector_passes + (3 * epochs if update else 0)


@lru_cache(maxsize=None)
def measured_matmul_flops(device_type: str, dtype: torch.dtype, size: int = 1024, repeats: int = 3) -> float:
    """FLOP/s of a square matrix product on `device_type` at `dtype` (the fastest of `repeats`)."""
    # filled from a private generator: the global RNG (sampling, a resumed run's exact replay) stays untouched
    generator = torch.Generator(device=device_type).manual_seed(0)
    a = torch.randn(size, size, device=device_type, generator=generator).to(dtype)
    b = torch.randn(size, size, device=device_type, generator=generator).to(dtype)
    best = float("inf")
    for _ in range(repeats + 1):  # the first is a warm-up
        if device_type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device_type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def peak_flops(device: torch.device, dtype: torch.dtype) -> float:
    """The device's FLOP/s to compare against: nominal bf16 on a known GPU, else measured at `dtype`."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for kind, tflops in NOMINAL_BF16_TFLOPS.items():
            if kind in name:
                return tflops * 1e12
    return measured_matmul_flops(device.type, dtype)


def step_perf(tokens: int, step_flops: float, seconds: float, peak: float) -> dict[str, torch.Tensor]:
    """`perf/throughput` (tokens / s on this device) and `perf/mfu` (its share of the peak)."""
    seconds = max(seconds, 1e-9)
    return {"perf/throughput": torch.tensor(tokens / seconds), "perf/mfu": torch.tensor(step_flops / seconds / peak)}


def compute_dtype(precision: object, model: torch.nn.Module) -> torch.dtype:
    """The dtype the matrix products run at: Lightning's precision ("bf16-mixed", "16-true", ...) or the weights'."""
    precision = str(precision)
    if "bf16" in precision:
        return torch.bfloat16
    if precision.startswith("16"):
        return torch.float16
    return next(model.parameters()).dtype


def rl_step_perf(model: torch.nn.Module, lengths: torch.Tensor, passes: int, seconds: float,
                 precision: object, matmul_params: int) -> dict[str, torch.Tensor]:
    """Throughput and MFU of a step over this device's rollouts of `lengths` [N] (prompt + response) tokens.
    `matmul_params` is counted once before training: walking a ZeRO-3 model's modules between its
    steps leaves a parameter marked in use, and the next gather for generation fails to free it."""
    device = next(model.parameters()).device
    flops = passes * forward_flops(model, lengths, matmul_params)
    return step_perf(int(lengths.sum()), flops, seconds, peak_flops(device, compute_dtype(precision, model)))
