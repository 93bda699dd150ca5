"""Connecting `rollout.engine=vllm_server` at its first use: the server (started by rank 0 on its own cores,
or attached by URL), the training processes confined to the other cores, and vLLM's weight transfer.

On a CPU machine vLLM slows several-fold when another process computes on its cores, so a server clipo
starts gets cores of its own (`rollout.vllm_server.cpus=auto`: the upper half of the cores this process may
use) and every training process moves all its threads to the rest.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from clipo.distributed import world
from clipo.rollout.vllm_server import VLLMServer

log = logging.getLogger(__name__)


def split_cores(cpus: Any, on_cuda: bool) -> tuple[list[int] | None, list[int] | None]:
    """(the server's cores, the trainer's) from `rollout.vllm_server.cpus`; None: no pinning."""
    mine = sorted(os.sched_getaffinity(0))
    if cpus is None or (cpus == "auto" and (on_cuda or len(mine) < 2)):
        return None, None
    server = mine[len(mine) // 2 :] if cpus == "auto" else sorted(int(c) for c in cpus)
    rest = [c for c in mine if c not in server]
    return server, rest or None


def confine(cpus: list[int], processes: int) -> int:
    """Move every thread of this process onto `cpus` and share them among the node's training processes;
    returns torch's new thread count."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except ProcessLookupError:  # a thread that ended meanwhile
            pass
    threads = max(1, len(cpus) // processes)
    torch.set_num_threads(threads)
    return threads


def from_rank_zero(value: Any) -> Any:
    """Rank 0's `value` on every rank (a collective: every rank calls it at its first generation)."""
    if world()[1] == 1:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def connect(engine: Any, rows: int, tokens_per_row: int) -> tuple[VLLMServer, Any]:
    """(the server, vLLM's trainer-side weight-transfer engine) for `engine` (a `VLLMServerEngine`)."""
    rank, size = world()
    server_cpus, trainer_cpus = split_cores(engine.cpus, engine.on_cuda) if engine.url is None else (None, None)
    server = None
    if rank == 0 and engine.url is None:
        server = VLLMServer.start(engine.launch(rows, tokens_per_row, server_cpus), engine.startup_timeout_s)
        log.info("vllm_server: started at %s on cores %s (pid %d, log %s)", server.url, server_cpus or "all",
                 server.process.pid, server.log_file)  # fmt: skip
    elif rank == 0:
        server = VLLMServer(engine.url)
        server.wait_until_healthy(engine.startup_timeout_s)
    url = from_rank_zero(None if server is None else server.url)
    server = server or VLLMServer(url, label="started by rank 0" if engine.url is None else None)
    if trainer_cpus:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", size))
        threads = confine(trainer_cpus, local)
        log.info("vllm_server: training on cores %s, torch threads %d", trainer_cpus, threads)
    return server, weight_transfer(engine, server, rank)


def weight_transfer(engine: Any, server: VLLMServer, rank: int) -> Any:
    """vLLM's trainer-side engine of `engine.weight_transfer`, joined to the server's workers (rank 0 sends;
    the other ranks only take part in the gathers of sharded weights)."""
    from vllm.distributed.weight_transfer.factory import WeightTransferTrainerFactory

    from clipo.rollout.vllm_weight_sync import PolicyWeights, ServerClient, trainer_init_info

    workers = server.get("get_world_size")["world_size"] if rank == 0 else 0
    info = trainer_init_info(engine.weight_transfer, rank, engine.transfer_address, engine.port(), 1 + workers)
    dtype = getattr(torch, engine.launch_dtype)
    return WeightTransferTrainerFactory.trainer_init(info, client=ServerClient(server),
                                                     source=PolicyWeights(engine.policy, dtype))  # fmt: skip
