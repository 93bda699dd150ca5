"""What both vLLM engines (colocated `vllm`, `vllm_server`) share: whether vLLM is there and can run the
model, the folder it loads the architecture from, the KV-cache size on CPU and the request seeds."""

from __future__ import annotations

import importlib.util
import math
import tempfile
from pathlib import Path
from typing import Any

import torch

from clipo.models import is_adapter

GiB = 2**30
KV_CACHE_AUTO_CAP = 4 * GiB  # beyond it, vLLM schedules a rollout phase's sequences in waves
KV_BLOCK_TOKENS = 128  # vLLM's CPU backend stores the KV cache in blocks of 128 tokens


def vllm_available() -> bool:
    """Whether vLLM is installed (without importing it: that takes seconds)."""
    return importlib.util.find_spec("vllm") is not None


def request_seeds(count: int, seed: int | None) -> list[int]:
    """One seed per vLLM request: `seed + i` with a fixed seed, else drawn from torch's global RNG, so the
    sampling stream follows the run's seed and resumes with the checkpointed RNG state."""
    if seed is not None:
        return [seed + i for i in range(count)]
    return torch.randint(0, 2**31 - 1, (count,)).tolist()


def kv_cache_bytes(
    config: Any, dtype: torch.dtype, rows: int, tokens_per_row: int, max_model_len: int, cap: int = KV_CACHE_AUTO_CAP
) -> int:
    """KV-cache bytes for `rows` sequences of `tokens_per_row` tokens, each in whole blocks of vLLM's CPU
    block size (the rounding leaves room for somewhat longer prompts later), at most `cap` (vLLM then runs
    the sequences in waves), and at least one `max_model_len` sequence (vLLM refuses less).
    A token takes K and V in every layer: 2 x layers x KV heads x head dim x dtype bytes."""
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    per_token = 2 * config.num_hidden_layers * heads * head_dim * dtype.itemsize
    batch = min(per_token * rows * KV_BLOCK_TOKENS * math.ceil(tokens_per_row / KV_BLOCK_TOKENS), cap)
    one_sequence = per_token * KV_BLOCK_TOKENS * (math.ceil(max_model_len / KV_BLOCK_TOKENS) + 1)
    return max(batch, one_sequence)


def kv_cache_problem(kv_cache_gib: Any) -> str | None:
    """Why `rollout.vllm.kv_cache_gib` is unusable, or None."""
    if kv_cache_gib == "auto" or (isinstance(kv_cache_gib, (int, float)) and not isinstance(kv_cache_gib, bool) and kv_cache_gib > 0):
        return None
    return f"rollout.vllm.kv_cache_gib={kv_cache_gib!r}: give a size in GiB > 0 (e.g. 0.5) or auto (sized to the rollout phase)"


def head_size_problem(policy: torch.nn.Module) -> str | None:
    """Why vLLM cannot run `policy` here: its CPU attention runs head sizes 32..512 only (None when it can)."""
    config = policy.config
    head = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if next(policy.parameters()).device.type == "cpu" and head < 32:
        return f"vLLM's CPU attention needs a head size of at least 32, this model has {head}"
    return None


def check_head_size(policy: torch.nn.Module) -> None:
    """Say why before the engine fails deep inside."""
    if problem := head_size_problem(policy):
        raise ValueError(
            f"{problem}; for model=tiny set model.tiny.num_attention_heads=2 model.tiny.num_key_value_heads=1 "
            "(64 / 2 = 32), or use rollout.engine=hf"
        )


def model_source(policy: torch.nn.Module) -> tuple[str, str, tempfile.TemporaryDirectory | None]:
    """(a folder or hub id vLLM reads the architecture from, vLLM's load format, the temporary folder to keep
    alive). The policy's own folder is loaded as it is; a model built in memory (`model=tiny`, a LoRA policy)
    gets a folder with its config alone and random ("dummy") weights: the policy's are pushed before the
    first sample, so nothing is written to disk twice (transformers' save_pretrained writes on rank 0 only)."""
    source = getattr(policy, "name_or_path", "") or ""
    if source and not is_adapter(policy) and ((Path(source) / "config.json").is_file() or not Path(source).exists()):
        return source, "auto", None  # a model folder, or a hub id
    folder = tempfile.TemporaryDirectory(prefix="clipo-vllm-")
    policy.config.save_pretrained(folder.name)
    return folder.name, "dummy", folder


def policy_dtype(policy: torch.nn.Module, configured: str | None) -> str:
    """The engine's weight dtype: `rollout.vllm.dtype` (resolved by the builders), else the policy's own."""
    return configured or str(next(policy.parameters()).dtype).removeprefix("torch.")
