"""The start-up measurement `trainer.precision=auto` decides from on a CPU with bf16 units.

A model of the run's own architecture and widths, cut to a few decoder layers (random weights:
speed does not depend on their values), runs each phase's work at the run's shapes in float32 and
from a bf16 copy of its weights, alternated: hf-style decoding of the step's rollouts (prefill and a
few tokens with the KV cache) for sampling, and a forward + backward over one micro-batch's tokens
for training. Times are this thread's CPU seconds on one torch thread, the minimum of the repeats:
on a shared machine, wall time mostly measures the other processes (two OpenMP threads then wait for
each other at every parallel region), while the CPU time of one thread measures the work itself, and
the minimum drops the repeats another process's cache traffic slowed. A ratio below 1 means bf16 is
faster. The probe takes about a second for SmolLM2-135M.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from clipo.run.working_copy import cast_parameters

# decoder layers the probe keeps: with the embedding and the LM head, the mix of shapes a step runs
PROBE_LAYERS = 2


@dataclass(frozen=True)
class ProbeShapes:
    """The run's shapes, capped so that the probe stays short (the ratios barely move above them)."""

    rollouts: int  # sequences decoded at once (prompts x group size, per process)
    prompt_tokens: int  # prompt length of the decoding probe
    new_tokens: int  # decoding steps timed
    train_tokens: int  # tokens of the training forward + backward (one micro-batch's share)

    @classmethod
    def of_run(cls, rollouts: int, micro_tokens: int) -> ProbeShapes:
        return cls(rollouts=max(1, min(rollouts, 64)), prompt_tokens=16, new_tokens=4,
                   train_tokens=max(16, min(micro_tokens, 128)))


@dataclass(frozen=True)
class Probe:
    """bf16's CPU time over float32's, per phase (below 1: bf16 is faster), and how it was measured."""

    sampling: float
    training: float
    seconds: float  # the probe's own wall time
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"sampling_bf16_over_fp32": round(self.sampling, 3), "training_bf16_over_fp32": round(self.training, 3),
                "probe_seconds": round(self.seconds, 2), "probe": self.detail}


def probe_model(config: Any, layers: int = PROBE_LAYERS, seed: int = 0) -> torch.nn.Module:
    """A float32 causal LM of `config`'s architecture and widths with `layers` decoder layers, random init."""
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(config)
    config.num_hidden_layers = min(layers, config.num_hidden_layers)
    config.use_cache = True
    if hasattr(config, "layer_types") and config.layer_types:  # per-layer attention kinds (Qwen2, Gemma...)
        config.layer_types = config.layer_types[: config.num_hidden_layers]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")
    return model.eval()


def measure(config: Any, shapes: ProbeShapes, repeats: int = 2) -> Probe:
    """Time both phases on float32 and bf16 weights of a cut-down `config` model (see the module doc)."""
    start = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fp32 = probe_model(config)
        bf16 = cast_parameters(copy.deepcopy(fp32), torch.bfloat16)  # as the run's working copy holds it
        vocab = config.vocab_size
        prompts = torch.randint(0, vocab, (shapes.rollouts, shapes.prompt_tokens))
        tokens = torch.randint(0, vocab, (1, shapes.train_tokens))
        sampling = _ratio(lambda m: _decode(m, prompts, shapes.new_tokens), fp32, bf16, repeats)
        training = _ratio(lambda m: _forward_backward(m, tokens), fp32, bf16, repeats)
    finally:
        torch.set_num_threads(threads)
    detail = (f"{PROBE_LAYERS}-layer {type(fp32).__name__} of the run's widths, 1 thread, CPU time, min of {repeats}: "
              f"decoding {shapes.rollouts} x ({shapes.prompt_tokens} + {shapes.new_tokens}) tokens; forward + backward "
              f"over {shapes.train_tokens} tokens")
    return Probe(sampling, training, time.perf_counter() - start, detail)


def _ratio(work: Callable[[torch.nn.Module], None], fp32: torch.nn.Module, bf16: torch.nn.Module, repeats: int) -> float:
    """min bf16 CPU time / min fp32 CPU time over `repeats` alternated rounds, after one warm-up each."""
    times: dict[int, list[float]] = {id(fp32): [], id(bf16): []}
    for round_ in range(repeats + 1):
        for model in (fp32, bf16) if round_ % 2 else (bf16, fp32):
            start = time.thread_time()
            work(model)
            if round_:  # round 0 warms up (kernel set-up, allocator)
                times[id(model)].append(time.thread_time() - start)
    return min(times[id(bf16)]) / max(min(times[id(fp32)]), 1e-9)


@torch.no_grad()
def _decode(model: torch.nn.Module, prompts: torch.Tensor, new_tokens: int) -> None:
    from transformers import DynamicCache

    cache = DynamicCache()
    logits = model(input_ids=prompts, past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
    for _ in range(new_tokens):
        token = logits.float().argmax(-1, keepdim=True)
        logits = model(input_ids=token, past_key_values=cache, use_cache=True).logits[:, -1]


def _forward_backward(model: torch.nn.Module, tokens: torch.Tensor) -> None:
    # the LM head on the second half only, as the update runs it on the response tokens alone
    logits = model(input_ids=tokens, use_cache=False, logits_to_keep=tokens.shape[1] // 2).logits  # [1, M/2, V]
    loss = torch.logsumexp(logits.float(), dim=-1).mean()
    loss.backward()
    model.zero_grad(set_to_none=True)
