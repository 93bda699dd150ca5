"""gpu_check's `varlen` check: the packed forward through flash-attention's varlen kernel against the padded one.

One micro-batch of 16 uneven rollouts (2 groups of 8 sharing a prompt, random tokens, one truncated and
one length-1 response). Log-probs of the varlen layout (`clipo.rollout.varlen`, flash_attention_2, bf16)
and of the padded forward (SDPA, bf16) are compared with the padded forward in fp32: the check passes
when the varlen error is at most twice the padded bf16 one plus 0.01 (a layout that let rollouts see
each other would be off by whole nats). Reported: both errors and the median seconds of a forward +
backward of each path. With --cpu-dry-run: model=tiny on CPU, the varlen layout forced on SDPA
(transformers builds the block-diagonal mask from the same position ids).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from clipo.builders import plain
from clipo.compose import compose
from clipo.models import load_model
from clipo.rollout import RolloutBatch, forward_responses
from clipo.rollout.forward import ForwardLayout, TrainingForward


def uneven_batch(vocab: int, device: str, dry_run: bool) -> RolloutBatch:
    """16 rollouts, left-padded prompts of P/2 (group 0) and P (group 1) tokens, responses of 1..T tokens."""
    gen = torch.Generator().manual_seed(0)
    n, P, T = 16, (24 if dry_run else 160), (48 if dry_run else 1024)
    groups = torch.arange(n) // 8
    prompt_lens = torch.where(groups == 0, P // 2, P)
    response_lens = torch.randint(1, T + 1, (n,), generator=gen)
    response_lens[0], response_lens[1] = T, 1
    cols = torch.arange(P + T)
    attention = ((cols >= P - prompt_lens[:, None]) & (cols < P + response_lens[:, None])).long()  # [n, P+T]
    sequences = torch.randint(3, vocab, (n, P + T), generator=gen)
    sequences[:, :P] = sequences[groups * 8, :P]  # a group shares its prompt
    sequences = sequences * attention
    return RolloutBatch(sequences.to(device), attention.to(device), attention[:, P:].bool().to(device), P,
                        groups.to(device), [""] * n, [""] * n, [""] * n, (response_lens == T).to(device))


def median_seconds(step, repeats: int = 5) -> float:
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    step()  # warm-up
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_varlen(dry_run: bool) -> dict[str, Any]:
    device, kernel = ("cpu", "sdpa") if dry_run else ("cuda", "flash_attention_2")
    with tempfile.TemporaryDirectory() as out:
        cfg = compose(["model=tiny" if dry_run else "model=smollm2_135m"], Path(out))
    model = load_model(**plain(cfg.model), seed=0)[0].to(device)
    batch = uneven_batch(model.config.vocab_size, device, dry_run)
    mask = batch.response_mask
    with torch.no_grad():
        truth = forward_responses(model, batch).logprobs[mask]  # fp32, SDPA, padded
    model = model.to(torch.bfloat16)
    paths = {name: TrainingForward(ForwardLayout(name)) for name in ("padded", "varlen")}
    errors, seconds = {}, {}
    for name, forward in paths.items():
        model.set_attn_implementation("sdpa" if name == "padded" else kernel)
        with torch.no_grad():
            errors[name] = float((forward(model, batch).logprobs[mask].float() - truth).abs().max())

        def step(forward=forward):
            forward(model, batch).logprobs[mask].float().sum().backward()
            model.zero_grad(set_to_none=True)

        seconds[name] = median_seconds(step)
    ok = errors["varlen"] <= 2 * errors["padded"] + 0.01
    why = (f"max |log-prob - fp32| varlen ({kernel}) {errors['varlen']:.3g}, padded (sdpa) {errors['padded']:.3g} "
           f"(bf16); forward+backward {seconds['varlen']:.3g} s varlen, {seconds['padded']:.3g} s padded; "
           f"{int(batch.attention_mask.sum())} real of {batch.attention_mask.numel()} padded tokens")
    return {"check": "varlen", "verdict": "PASS" if ok else "FAIL", "why": why, "errors": errors,
            "seconds_per_micro_batch": seconds, "device": torch.cuda.get_device_name(0) if not dry_run else "cpu"}
