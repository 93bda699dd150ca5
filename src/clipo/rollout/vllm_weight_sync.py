"""Pushing the policy's weights into a vLLM server through vLLM's own weight-transfer API.

vLLM's RL routes (`/init_weight_transfer_engine`, `/start_weight_update`, `/update_weights`,
`/finish_weight_update`, under `VLLM_SERVER_DEV_MODE=1`) drive a `WeightTransferEngine` in the server's
worker and a `TrainerWeightTransferEngine` in the trainer. vLLM 0.32 ships NCCL and CUDA-IPC backends
only; this module adds `gloo` for CPU, registered in both of vLLM's factories: the NCCL backend's
one-tensor-at-a-time broadcast (rank 0 the trainer, the server's workers after it) over a gloo group
made by vLLM's `stateless_init_torch_distributed_process_group`, loaded with vLLM's layerwise reload.
The server imports this module through `--worker-extension-cls` (`GlooWeightSyncExtension`), which
registers the backend in its worker before the worker builds its transfer engine.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from torch.distributed import BroadcastOptions
from vllm.distributed.weight_transfer.base import (
    ParamMeta,
    TrainerInitInfo,
    TrainerWeightTransferEngine,
    WeightSource,
    WeightTransferEngine,
    WeightTransferInitInfo,
    WeightTransferUpdateInfo,
)
from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory, WeightTransferTrainerFactory

from clipo.rollout.vllm_weights import named_weights, repack_tied_head, weight_shapes

BACKEND = "gloo"


@dataclass
class GlooInitInfo(WeightTransferInitInfo):
    """The server worker's side of the rendezvous (the trainer's sender is rank 0)."""

    master_address: str
    master_port: int
    rank_offset: int
    world_size: int


@dataclass
class GlooTrainerInitInfo(TrainerInitInfo):
    """The trainer's side: `rank` is the trainer process's own (rank 0 sends, the others only gather)."""

    backend: ClassVar[str] = BACKEND
    master_address: str
    master_port: int
    world_size: int


@dataclass
class GlooUpdateInfo(WeightTransferUpdateInfo):
    names: list[str]
    dtype_names: list[str]
    shapes: list[list[int]]


def gloo_group(address: str, port: int, rank: int, world_size: int) -> Any:
    from vllm.distributed.utils import stateless_init_torch_distributed_process_group

    return stateless_init_torch_distributed_process_group(address, port, rank, world_size, backend="gloo")


def broadcast(group: Any, tensor: torch.Tensor) -> None:
    """Broadcast from the group's rank 0 (the group is outside torch.distributed's world: call it directly)."""
    options = BroadcastOptions()
    options.rootRank = 0
    group.broadcast([tensor], options).wait()


class GlooWeightTransferEngine(WeightTransferEngine[GlooInitInfo, GlooUpdateInfo]):
    """The server worker's side: receives each tensor and loads it through vLLM's layerwise reload."""

    init_info_cls = GlooInitInfo
    update_info_cls = GlooUpdateInfo

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.group: Any = None

    def init_transfer_engine(self, init_info: GlooInitInfo) -> None:
        rank = self.parallel_config.data_parallel_index * self.parallel_config.world_size + self.parallel_config.rank
        self.group = gloo_group(init_info.master_address, init_info.master_port, rank + init_info.rank_offset,
                                init_info.world_size)

    def start_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        initialize_layerwise_reload(self.model)

    def finish_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        finalize_layerwise_reload(self.model, self.model_config)
        repack_tied_head(self.model)

    def update_weights(self, update_info: dict[str, Any]) -> None:
        self.receive_weights(self.parse_update_info(update_info))  # gloo's wait() has finished every copy

    def receive_weights(self, update_info: GlooUpdateInfo) -> None:
        if self.group is None:
            raise RuntimeError("gloo weight transfer not initialized: call /init_weight_transfer_engine first")
        for name, dtype_name, shape in zip(update_info.names, update_info.dtype_names, update_info.shapes):
            weight = torch.empty(shape, dtype=getattr(torch, dtype_name), device=self.device)
            broadcast(self.group, weight)
            self.model.load_weights([(name, weight)])

    def shutdown(self) -> None:
        self.group = None


class GlooTrainerWeightTransferEngine(TrainerWeightTransferEngine[GlooTrainerInitInfo]):
    """The trainer's side, as vLLM's NCCL trainer engine: rank 0 opens the group while the server joins it,
    and each push runs `/update_weights` beside the broadcasts; other ranks only iterate the source (its
    gathers are collectives of the trainer's own processes)."""

    init_info_cls = GlooTrainerInitInfo

    @classmethod
    def trainer_init(cls, init_info: GlooTrainerInitInfo, *, client: Any, source: WeightSource | None = None):
        engine = cls(client=client, source=source, is_sender=init_info.is_sender)
        engine.group = None
        if engine.is_sender:
            worker = GlooInitInfo(init_info.master_address, init_info.master_port, 1, init_info.world_size)
            with ThreadPoolExecutor(max_workers=1) as pool:  # both sides block in the rendezvous
                joined = pool.submit(client.init_weight_transfer_engine, asdict(worker))
                engine.group = gloo_group(init_info.master_address, init_info.master_port, 0, init_info.world_size)
                joined.result()
        return engine

    def send_weights(self) -> None:
        """One full push (every trainer rank calls it)."""
        meta = self.source.metadata()
        if not self.is_sender:
            for _ in self.source:
                pass
            return
        info = GlooUpdateInfo([m.name for m in meta], [str(m.dtype).removeprefix("torch.") for m in meta],
                              [list(m.shape) for m in meta])
        self.client.start_weight_update()
        pool = ThreadPoolExecutor(max_workers=1)
        try:
            received = pool.submit(self.client.update_weights, asdict(info))
            for (name, tensor), expected in zip(self.source, meta, strict=True):
                if name != expected.name or tuple(tensor.shape) != expected.shape:
                    raise ValueError(f"weight source yielded {name} {tuple(tensor.shape)}, declared {expected}")
                broadcast(self.group, tensor.detach().contiguous())
            received.result()
        finally:
            pool.shutdown(wait=False)  # a failed broadcast leaves the server's call blocked: never join it
        self.client.finish_weight_update()

    def shutdown(self) -> None:
        self.group = None


class GlooWeightSyncExtension:
    """`--worker-extension-cls` of a clipo-started server: importing it registers the gloo backend in the
    worker's process (its methods add nothing)."""


def register() -> None:
    """Add `gloo` to vLLM's worker and trainer weight-transfer factories (once per process)."""
    if BACKEND not in WeightTransferEngineFactory._registry:
        WeightTransferEngineFactory.register_engine(BACKEND, GlooWeightTransferEngine)
    if BACKEND not in WeightTransferTrainerFactory._registry:
        WeightTransferTrainerFactory.register_engine(BACKEND, GlooTrainerWeightTransferEngine)


register()


class PolicyWeights(WeightSource):
    """The policy's weights as vLLM's `WeightSource`: full shapes without gathering, then `named_weights`
    (ZeRO-3 / FSDP2 shards gathered one at a time, a LoRA adapter merged)."""

    def __init__(self, policy: torch.nn.Module, dtype: torch.dtype | None = None) -> None:
        self.policy, self.dtype = policy, dtype

    def metadata(self) -> list[ParamMeta]:
        return [ParamMeta(name, self.dtype or dtype, shape) for name, dtype, shape in weight_shapes(self.policy)]

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name, tensor in named_weights(self.policy):
            yield name, tensor if self.dtype is None else tensor.to(self.dtype)


class ServerClient:
    """vLLM's `VLLMWeightSyncClient` over `VLLMServer.post`, so a failing call names the server."""

    def __init__(self, server: Any) -> None:
        self.server = server

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        self.server.post("init_weight_transfer_engine", {"init_info": init_info})

    def start_weight_update(self) -> None:
        self.server.post("start_weight_update")

    def update_weights(self, update_info: Any) -> None:
        from vllm.distributed.weight_transfer.clients import _json_safe_update_payload

        self.server.post("update_weights", {"update_info": _json_safe_update_payload(update_info)})

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self.server.post("finish_weight_update", None if weight_version is None else {"weight_version": weight_version})


def trainer_init_info(backend: str, rank: int, address: str, port: int, world_size: int) -> TrainerInitInfo:
    """The trainer-side init info of vLLM's `backend` (gloo here; nccl, ipc: vLLM's own, for GPUs)."""
    if backend == BACKEND:
        return GlooTrainerInitInfo(address, port, world_size, rank=rank)
    if backend == "nccl":
        from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo

        return NCCLTrainerInitInfo(address, port, world_size, rank=rank)
    if backend == "ipc":
        from vllm.distributed.weight_transfer.ipc_engine import IPCTrainerInitInfo

        return IPCTrainerInitInfo(rank=rank)
    raise ValueError(f"rollout.vllm_server.weight_transfer={backend!r}: choose auto, gloo, nccl or ipc")
