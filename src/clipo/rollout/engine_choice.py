"""`rollout.engine=auto`: the engine a run samples with, decided once, before it is built.

vLLM's generate phase took 0.44 of the hf engine's on the same config (issue #26, 2 AVX-512
BF16 cores), so `auto` takes vLLM wherever it is installed, imports and runs the model, in a run of
one process or several (one engine beside each rank, joined to the trainer's processes through vLLM's
`external_launcher`: run on 2 CPU processes under ddp, deepspeed_zero2, deepspeed_zero3 and fsdp), and hf
otherwise: hf runs every model transformers runs. The choice and its reason are among the run's first
lines.
"""

from __future__ import annotations

import torch

from clipo.rollout.vllm_support import head_size_problem, vllm_available
from clipo.run.runtime import Choice

ENGINE_NAMES = ("auto", "hf", "vllm")


def choose_engine(requested: str, policy: torch.nn.Module, processes: int) -> Choice:
    """`rollout.engine`, with `auto` resolved for `policy` in a run of `processes` training processes."""
    if requested != "auto":
        return Choice(requested, f"rollout.engine={requested} was set explicitly")
    problem = vllm_problem(policy)
    if problem is None:
        import vllm

        where = f", one engine beside each of the {processes} training processes" if processes > 1 else ""
        return Choice("vllm", f"auto: vLLM {vllm.__version__} is installed and runs {architecture(policy)}{where}")
    return Choice("hf", f"auto: {problem}")


def vllm_problem(policy: torch.nn.Module) -> str | None:
    """Why the vllm engine is not the automatic choice for `policy` (None when it is)."""
    if not vllm_available():
        return "vLLM is not installed (./scripts/setup.sh installs its CPU build on x86-64 Linux)"
    if problem := head_size_problem(policy):
        return problem
    try:
        from vllm import ModelRegistry
    except Exception as error:  # a broken install must not stop a run that hf can sample
        return f"vLLM is installed but does not import ({type(error).__name__}: {str(error)[:200]})"
    if (arch := architecture(policy)) not in ModelRegistry.get_supported_archs():
        return f"vLLM has no implementation of {arch}"
    return None


def architecture(policy: torch.nn.Module) -> str:
    """The model class vLLM would load (a LoRA policy: its base model's)."""
    base = policy.get_base_model() if hasattr(policy, "get_base_model") else policy
    return (getattr(base.config, "architectures", None) or [type(base).__name__])[0]


def engine_dtype(configured: str | None, sampling: str | None) -> str | None:
    """The vllm engine's weight dtype: `rollout.vllm.dtype` when set, bfloat16 when the precision plan samples
    in bf16 (`clipo.run.precision`), else None (the policy's weights' dtype)."""
    if configured:
        return configured
    return "bfloat16" if sampling == "bfloat16" else None
