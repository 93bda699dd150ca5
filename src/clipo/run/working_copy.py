"""The policy's bf16 working copy: fp32 master weights, cast once per update.

Mixed precision without autocast (Micikevicius et al., 2018, https://arxiv.org/abs/1710.03740): the
policy keeps its float32 weights (the master copy: what the optimizer steps, checkpoints hold and
the export writes), and a bfloat16 copy of it does the arithmetic: the hf engine samples from it,
the collector's no-grad passes and the update's forward/backward run on it. The copy is cast from the
master once after each optimizer step (and after a checkpoint is loaded into the master), never op
by op: bf16 autocast re-casts every weight at every call, at every decoding step in generation.

The backward pass of the copy produces bf16 gradients; a hook on each of its parameters adds the
gradient into its master's float32 `.grad` as soon as it is accumulated and frees the bf16 one, so
gradient accumulation over micro-batches sums in float32 and clipping, the optimizer and its state
see float32 exactly as in a float32 run. What bf16 rounds is the forward/backward arithmetic only
(relative error about 2^-9 per rounding); the weights' small updates (lr 1e-5 against weights of
about 0.05: 100x below bf16's spacing there) accumulate in the float32 master, where pure bf16
weights (`bf16-true` without a master copy) would round them away.

The copy's SDPA attention runs in float32 where it takes gradients: torch's CPU flash-attention
backward is slower in bf16 than in float32 (2.8x at SmolLM2-135M's update shapes on an Intel Xeon
with AMX: 1.26 s of a 7.6 s update), and its q, k, v are small next to the matrix products around it.
Sampling and no-grad passes keep bf16 attention (casting a growing KV cache at every decoding step
would cost more than it saves).
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

# the copy's attention implementation: SDPA, in float32 under grad (registered with transformers below)
SDPA_FLOAT32_GRAD = "sdpa_float32_grad"


class WorkingCopy:
    """A `dtype` copy of `master` (same structure, tied weights kept tied), refreshed by hooks.

    Args:
        master: the float32 policy (its parameters are what the optimizer is built on).
        dtype: the copy's dtype (bfloat16).
    """

    def __init__(self, master: torch.nn.Module, dtype: torch.dtype = torch.bfloat16) -> None:
        self.master, self.dtype = master, dtype
        self.module = cast_parameters(copy.deepcopy(master), dtype)
        if getattr(self.module.config, "_attn_implementation", None) == "sdpa":
            self.module.config._attn_implementation = SDPA_FLOAT32_GRAD  # the copy's own config (deep-copied)
        self.work, self.main = list(self.module.parameters()), list(master.parameters())
        if len(self.work) != len(self.main):
            raise ValueError("the copy's parameters do not match the policy's")
        for work, main in zip(self.work, self.main):
            if work.requires_grad:
                work.register_post_accumulate_grad_hook(_into_master(main))
        # a checkpoint loaded into the master (resume) reaches the copy at once
        master.register_load_state_dict_post_hook(lambda *_: self.refresh())

    @torch.no_grad()
    def refresh(self) -> None:
        """Cast the master's current weights into the copy (in place: the engines keep the same module)."""
        torch._foreach_copy_(self.work, self.main)  # one cast per tensor, in torch's multi-tensor kernel

    def optimizer_factory(self, factory: Callable[..., torch.optim.Optimizer]) -> Callable[..., torch.optim.Optimizer]:
        """`factory` (the policy's partial optimizer), whose optimizer refreshes the copy after each step."""

        def build(*args: Any, **kwargs: Any) -> torch.optim.Optimizer:
            optimizer = factory(*args, **kwargs)
            optimizer.register_step_post_hook(lambda *_: self.refresh())
            return optimizer

        return build


def cast_parameters(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """`module` with its parameters cast to `dtype` in place (tied ones stay tied). Buffers keep their dtype:
    `module.to(dtype)` would also round a rotary embedding's float32 inverse frequencies (by up to 2^-9,
    an angle error that grows with the position)."""
    for param in module.parameters():
        param.data = param.data.to(dtype)
    return module


def _into_master(main: torch.nn.Parameter) -> Callable[[torch.Tensor], None]:
    def hook(work: torch.Tensor) -> None:
        if main.grad is None:
            main.grad = work.grad.to(main.dtype)
        else:  # later micro-batches: added in float32 as read (no float32 temporary)
            main.grad.add_(work.grad)
        work.grad = None

    return hook


def sdpa_float32_grad(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, Any]:
    """transformers' SDPA attention, computed in float32 when it takes gradients of 16-bit inputs (the output
    cast back); as it is otherwise."""
    if not (torch.is_grad_enabled() and query.requires_grad and query.dtype in (torch.bfloat16, torch.float16)):
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if attention_mask is not None and attention_mask.is_floating_point():  # an additive mask
        attention_mask = attention_mask.float()
    out, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(), attention_mask, **kwargs)
    return out.to(query.dtype), weights


AttentionInterface.register(SDPA_FLOAT32_GRAD, sdpa_float32_grad)
AttentionMaskInterface.register(SDPA_FLOAT32_GRAD, sdpa_mask)
