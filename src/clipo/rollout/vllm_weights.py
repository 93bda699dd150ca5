"""The policy's weights as a vLLM engine loads them: whole tensors under the plain model's names.

Shared by the colocated engine (`vllm_engine`, loaded in its worker through `collective_rpc`) and the
server engine (`vllm_server_engine`, sent through vLLM's weight-transfer API).
"""

from __future__ import annotations

from typing import Any, Iterator

import torch
from torch.distributed.tensor import DTensor

from clipo.models import is_adapter, merged_weights


def named_weights(policy: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF checkpoint name, full tensor) for every parameter; a ZeRO-3 or FSDP2 shard is gathered, one
    parameter at a time (every rank iterates: the gathers are collectives), and copied out before it is
    partitioned again, so nothing stays gathered; a parameter gathered already (ZeRO-3's generation
    phase) is read as it is. A LoRA policy gives its merged weights under the plain model's names."""
    if is_adapter(policy):
        yield from merged_weights(policy).items()
        return
    for name, param in policy.named_parameters():
        if hasattr(param, "ds_id"):  # DeepSpeed ZeRO-3
            from deepspeed.runtime.zero import GatheredParameters
            from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

            if param.ds_status == ZeroParamStatus.AVAILABLE:  # gathered for the rollout phase already
                yield name, param.data
                continue
            with GatheredParameters([param]):
                yield name, param.data.clone()
        elif isinstance(param.data, DTensor):  # FSDP2
            yield name, param.data.full_tensor()
        else:
            yield name, param.detach()


def weight_shapes(policy: torch.nn.Module) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
    """(name, dtype, full shape) of every tensor `named_weights` yields, in its order, without gathering."""
    if is_adapter(policy):
        return [(name, t.dtype, tuple(t.shape)) for name, t in merged_weights(policy).items()]
    return [(name, p.dtype, tuple(getattr(p, "ds_shape", p.shape))) for name, p in policy.named_parameters()]


def repack_tied_head(model: torch.nn.Module) -> None:
    """Re-pack a vLLM model's tied LM head after its weights were reloaded: vLLM's reload skips it (its weight
    is the embedding's, so no checkpoint name reaches it), and its CPU kernel would keep the old embedding
    (measured: log-probs 0.43 apart from the trainer's instead of 5e-7 on the tiny model)."""
    head = getattr(model, "lm_head", None)
    if getattr(model.config, "tie_word_embeddings", False) and hasattr(head, "quant_method"):
        head.quant_method.process_weights_after_loading(head)


def reload_in_worker(worker: Any, weights: Iterator[tuple[str, torch.Tensor]]) -> None:
    """Runs in a colocated engine's worker (`collective_rpc`): load `weights` in place (vLLM re-packs each
    layer's kernels), then the tied head."""
    worker.reload_weights(weights_iterator=weights)
    repack_tied_head(worker.model_runner.model)
