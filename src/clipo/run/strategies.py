"""Sharded strategies that also run on CPU processes: DeepSpeed ZeRO-2/3 and FSDP2.

Lightning's `DeepSpeedStrategy` refuses any accelerator but CUDA, and its FSDP strategies refuse
the CPU, yet DeepSpeed's CPU accelerator (gloo without oneCCL) and torch's FSDP2 (`fully_shard`)
both train on CPU processes. These adapters lift only those guards, so a sharded run can be
debugged on a laptop and the tests prove that a sharded step equals one process; on CUDA they
behave exactly as Lightning's own strategies.

- `ClipoDeepSpeedStrategy` (`strategy=deepspeed_zero{2,3}`): Lightning's strategy, with the CPU
  allowed, the gradient clipping taken from `ppo.max_grad_norm`, and CLIPO's contrastive head and
  pooler kept out of the engine (they train on their own float32 AdamW: ZeRO must neither cast,
  partition nor reduce them).
- `FSDP2Strategy` (`strategy=fsdp`): Lightning's `ModelParallelStrategy` as pure data parallelism,
  `fully_shard` on every decoder layer of the policy (and the reference) and on the model.
"""

from __future__ import annotations

import argparse
from contextlib import ExitStack, contextmanager, nullcontext
from typing import Any, Callable, Iterator

import torch
from lightning.fabric.utilities.seed import reset_seed
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.strategies import DeepSpeedStrategy, ModelParallelStrategy

# submodules of the LightningModule that stay out of the DeepSpeed engine
UNSHARDED_CHILDREN = ("contrastive",)
# where their state goes in a DeepSpeed checkpoint's client state
UNSHARDED_KEY = "clipo_unsharded_modules"


class ClipoDeepSpeedStrategy(DeepSpeedStrategy):
    """`DeepSpeedStrategy` that also runs on CPU processes (gloo).

    Args:
        gradient_clipping: the norm DeepSpeed clips to inside its step (`ppo.max_grad_norm`; None or 0: none).
        param_persistence_threshold: ZeRO-3 keeps parameters of at most this many elements whole on every
            rank (None: DeepSpeed's default, 100k).
        **kwargs: Lightning's `DeepSpeedStrategy` arguments (`stage`, `offload_optimizer`, ...).
    """

    def __init__(self, gradient_clipping: float | None = None, param_persistence_threshold: int | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gradient_clipping = float(gradient_clipping or 0.0)
        self.param_persistence_threshold = param_persistence_threshold
        self._inference_engine_made = False  # `trainer.validate` before `fit` (clipo's validation before training)

    def setup_environment(self) -> None:
        if isinstance(self.accelerator, CPUAccelerator):  # Lightning's check accepts CUDA only
            super(DeepSpeedStrategy, self).setup_environment()
            return
        super().setup_environment()

    def setup_distributed(self) -> None:
        if not isinstance(self.accelerator, CPUAccelerator):
            super().setup_distributed()
            return
        # CPU devices have no index to match the local ranks against (Lightning checks CUDA indices)
        reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()

    def _init_config_if_needed(self) -> None:
        super()._init_config_if_needed()
        self.config["gradient_clipping"] = self.gradient_clipping
        # clipo's updater runs several backward passes (micro-batches) per optimizer step: the engine
        # then only accumulates in backward and reduces in step() (with its default, every backward of a
        # gradient-accumulation-steps=1 engine is a boundary and replaces the gradient of the previous one)
        self.config["managed_gradient_accumulation"] = False
        if self.param_persistence_threshold is not None:
            self.config["zero_optimization"]["stage3_param_persistence_threshold"] = self.param_persistence_threshold

    def backward(self, closure_loss: torch.Tensor, optimizer: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        # clipo calls the policy inside the engine's module, not `engine.forward`, which would tell ZeRO-3
        # that a new micro-batch starts (its gradient partitions then add up instead of being replaced)
        if self.zero_stage_3:
            self.model.optimizer.clear_backward_seen_flag()
        return super().backward(closure_loss, optimizer, *args, **kwargs)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> Any:
        # ZeRO-3's step re-partitions every parameter of the engine's module: not the contrastive part
        with children_hidden(self.lightning_module) if self.zero_stage_3 else nullcontext():
            return super().optimizer_step(*args, **kwargs)

    def save_checkpoint(self, checkpoint: dict, filepath: Any, storage_options: Any = None) -> None:
        # DeepSpeed writes the engine's module (its shards under ZeRO-3); the contrastive part, hidden
        # from it, travels in the client state
        module = self.lightning_module
        checkpoint[UNSHARDED_KEY] = {name: module._modules[name].state_dict() for name in UNSHARDED_CHILDREN
                                     if name in module._modules}
        with children_hidden(module):
            super().save_checkpoint(checkpoint, filepath, storage_options)

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        module = self.lightning_module
        with children_hidden(module):
            state = super().load_checkpoint(checkpoint_path, weights_only)
        for name, child_state in state.get(UNSHARDED_KEY, {}).items():
            module._modules[name].load_state_dict(child_state)
        return state

    def _setup_model_and_optimizer(self, model: torch.nn.Module, optimizer: Any, lr_scheduler: Any = None) -> Any:
        """`deepspeed.initialize` on the module without its contrastive part, put back afterwards: the
        engine then neither casts it to bf16, partitions it (ZeRO-3) nor hooks its gradients."""
        import deepspeed
        from lightning.pytorch.strategies.deepspeed import remove_module_hooks

        with children_hidden(model):
            if self._inference_engine_made:  # validation before fit: its ZeRO-3 hooks would run beside the new ones
                remove_module_hooks(model)
            engine, optimizer, _, _ = deepspeed.initialize(
                args=argparse.Namespace(device_rank=self._device_rank()),
                config=self.config,
                model=model,
                model_parameters=[p for p in model.parameters() if p.requires_grad],
                optimizer=optimizer,
                lr_scheduler=lr_scheduler,
                dist_init_required=False,
            )
        return engine, optimizer

    def _initialize_deepspeed_inference(self, model: torch.nn.Module) -> None:
        """Lightning's inference engine (`trainer.validate` before `fit`): the same config subset, with the
        CPU's device rank and without the contrastive part, as in training (Lightning passes the CUDA index,
        None on a CPU, which DeepSpeed cannot compare)."""
        import deepspeed
        from lightning.pytorch.strategies.deepspeed import remove_module_hooks

        config = {"train_micro_batch_size_per_gpu": 1}
        config |= {key: self.config[key] for key in ("fp16", "bf16") if key in self.config}
        if self.zero_stage_3:
            config |= {key: self.config[key] for key in ("zero_allow_untested_optimizer", "zero_optimization")}
        with children_hidden(model):
            remove_module_hooks(model)  # a training engine's hooks (validation after fit), as Lightning does
            self._inference_engine_made = True
            self.model, _, _, _ = deepspeed.initialize(
                args=argparse.Namespace(device_rank=self._device_rank()), config=config, model=model,
                optimizer=None, lr_scheduler=None, model_parameters=[], dist_init_required=False,
            )

    def _device_rank(self) -> int:
        """Lightning passes the CUDA index; a CPU device has none, and DeepSpeed reads -1 as "one process"."""
        index = self.root_device.index
        return self.local_rank if index is None else index


@contextmanager
def children_hidden(module: torch.nn.Module) -> Iterator[None]:
    """`UNSHARDED_CHILDREN` taken out of `module` inside (so DeepSpeed neither wraps nor hooks them)."""
    kept = {name: module._modules.pop(name) for name in UNSHARDED_CHILDREN if name in module._modules}
    try:
        yield
    finally:
        module._modules.update(kept)


@contextmanager
def zero3_generation(engine: Any) -> Iterator[Any]:
    """DeepSpeed's `unwrap_model_for_generation` (weights gathered once, ZeRO's fetch hooks lifted), whose
    exit re-registers the hooks on the whole module: the contrastive part is hidden from that too."""
    from deepspeed.runtime.zero import unwrap_model_for_generation

    module = getattr(engine, "module", None)
    with ExitStack() as after_exit:
        with unwrap_model_for_generation(engine) as model:
            try:
                yield model
            finally:
                if isinstance(module, torch.nn.Module):
                    after_exit.enter_context(children_hidden(module))


def deepspeed_grad_norm(strategy: DeepSpeedStrategy) -> Callable[[], torch.Tensor]:
    """DeepSpeed clips inside its own step: the step's global gradient norm, read after it (the gradients are
    partitioned or still unreduced before)."""

    def norm() -> torch.Tensor:
        value = strategy.model.get_global_grad_norm()
        return torch.as_tensor(0.0 if value is None else float(value))

    return norm


class FSDP2Strategy(ModelParallelStrategy):
    """FSDP2 data parallelism over all processes: `fully_shard` per decoder layer and on the policy.

    Args:
        process_group_backend: gloo on CPU, nccl on GPU (None: Lightning's choice for the device).
        save_distributed_checkpoint: each rank writes its shard into a checkpoint folder (True), or
            rank 0 writes one consolidated file (False).
        **kwargs: Lightning's `ModelParallelStrategy` arguments (`timeout`, ...).
    """

    def __init__(self, process_group_backend: str | None = None, save_distributed_checkpoint: bool = True,
                 **kwargs: Any) -> None:
        super().__init__(process_group_backend=process_group_backend,
                         save_distributed_checkpoint=save_distributed_checkpoint, **kwargs)

    def save_checkpoint(self, checkpoint: dict, filepath: Any, storage_options: Any = None) -> None:
        """Lightning's save, then `checksums.json` for the `.distcp` shards (they have no checksum of their own;
        `clipo.run.integrity` verifies them on load). Removed first, so a save cut short leaves none."""
        from pathlib import Path

        from clipo.run.integrity import CHECKSUMS, write_checksums

        folder = Path(self.broadcast(filepath))
        if self.is_global_zero and folder.is_dir():
            (folder / CHECKSUMS).unlink(missing_ok=True)
        super().save_checkpoint(checkpoint, filepath, storage_options)
        if self.is_global_zero and folder.is_dir():  # rank 0 returns once every rank's shard is written
            write_checksums(folder)

    def setup_environment(self) -> None:
        # one data-parallel dimension over every process, no tensor parallelism
        self._data_parallel_size = self.num_nodes * self.num_processes
        self._tensor_parallel_size = 1
        super().setup_environment()


def shard_for_fsdp(strategy: FSDP2Strategy, models: list[torch.nn.Module | None]) -> None:
    """`LightningModule.configure_model` under `strategy=fsdp`: shard each model (the policy, the reference)
    over the data-parallel mesh (once)."""
    mesh = strategy.device_mesh["data_parallel"]
    for model in models:
        if model is not None:
            fully_shard_decoder(model, mesh)


def fully_shard_decoder(model: torch.nn.Module, mesh: Any) -> None:
    """`fully_shard` on each decoder layer, then on the whole model (embeddings, norm, LM head);
    a model sharded already is left as it is."""
    from torch.distributed.fsdp import FSDPModule, fully_shard

    if isinstance(model, FSDPModule):  # the reference shares the policy under LoRA: sharded once
        return
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh)
    # the model's own group (embeddings, final norm, tied LM head) stays unsharded from the first forward
    # to the end of the backward: clipo's training forward calls the decoder and then the LM head weight
    # directly, not the model's forward (which would unshard it), so the decoder's call unshards it
    fully_shard(model, mesh=mesh, reshard_after_forward=False)
    # FSDP2 takes the first module whose forward runs as its root; the training forward never runs the
    # model's own, so without this the first decoder layer would become root and the model group's gradients
    # (embeddings, norm) would stay unreduced plain tensors when no generation ran the model first (vllm engine)
    model._get_fsdp_state()._lazy_init()
    model.get_decoder().register_forward_pre_hook(lambda *_: model.unshard())


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks of a HF causal LM (a PEFT-wrapped one too)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return list(base.get_decoder().layers)


@contextmanager
def full_parameters(model: torch.nn.Module, kind: Any) -> Iterator[torch.nn.Module]:
    """Every rank holds `model`'s full parameters inside (a collective: all ranks enter together), sharded
    again afterwards, by the run's strategy kind (`clipo.run.facts.StrategyKind`). ZeRO-3: DeepSpeed's
    `GatheredParameters`; FSDP2: each FSDP module is unsharded and kept so across forward passes
    (generation runs many of them, a different number on each rank); other kinds: as they are."""
    from clipo.run.facts import StrategyKind

    if kind is StrategyKind.ZERO3:
        from deepspeed.runtime.zero import GatheredParameters

        with GatheredParameters(list(model.parameters())):
            yield model
        return
    if kind is not StrategyKind.FSDP:
        yield model
        return
    from torch.distributed.fsdp import FSDPModule

    modules = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for m in modules:
        m.set_reshard_after_forward(False, recurse=False)
        m.unshard()
    try:
        yield model
    finally:
        for m in modules:
            m.reshard()
            m.set_reshard_after_forward(True, recurse=False)


def consolidated_state_dict(model: torch.nn.Module, kind: Any) -> dict[str, torch.Tensor]:
    """`model`'s full state dict on CPU (a collective under ZeRO-3 and FSDP2: every rank calls it; under
    FSDP2 only rank 0 receives the tensors, the others an empty dict)."""
    from clipo.run.facts import StrategyKind

    if kind is StrategyKind.FSDP:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    with full_parameters(model, kind):
        return {name: tensor.detach().cpu().clone() for name, tensor in model.state_dict().items()}


def strategy_problems(cfg: Any, on_cpu: bool) -> list[str]:
    """What a sharded strategy cannot do with this config, said before any model loads."""
    import importlib.util

    name = str(cfg.strategy.name)
    problems = []
    if name.startswith("deepspeed") and importlib.util.find_spec("deepspeed") is None:
        problems.append(f"strategy={name} needs DeepSpeed: DS_BUILD_OPS=0 pip install deepspeed "
                        "(scripts/setup.sh --dev installs it)")
    if name.endswith("_offload") and on_cpu:
        problems.append(f"strategy={name} moves ZeRO's state from GPU to CPU memory (stepped by DeepSpeed's compiled "
                        f"CPU Adam); on CPU processes the state is in CPU memory already: use "
                        f"strategy={name.removesuffix('_offload')}")
    if cfg.model.get("lora_rank") and (name.startswith("deepspeed_zero3") or name == "fsdp"):
        problems.append(f"model.lora_rank={cfg.model.lora_rank} with strategy={name}: a LoRA adapter is not sharded "
                        "by clipo (its export, weight push and disabled-adapter reference need whole weights); the "
                        "adapter and its optimizer state are small, so use strategy=deepspeed_zero2 or strategy=ddp")
    return problems
