"""The `vllm_server` rollout engine: generation on vLLM's own server, on processes (cores, devices) of its own.

Shapes as in `clipo.rollout.batch`. Rank 0 starts the server at the first `generate` (or attaches to
`rollout.vllm_server.url`) and every rank sends its own prompts to it: token ids in, token ids, the
sampler's log-probs (after temperature and top-k/p) and the policy version that sampled them out. After
each update `sync_weights` pushes the policy through vLLM's weight-transfer API (`vllm_weight_sync`:
gloo on CPU; vLLM's nccl or CUDA-IPC backends on GPUs) between `/pause` (in-flight requests finish first)
and `/resume`, labels the server's weights with the new version, and holds every rank until the push is
done. Like the colocated engine it returns no hidden states: the training forward takes them.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from clipo.distributed import world
from clipo.registry import ENGINES
from clipo.rollout.batch import RolloutBatch, per_rollout
from clipo.rollout.prompts import prompt_texts
from clipo.rollout.sampling import Sampling
from clipo.rollout.vllm_batch import rollout_batch
from clipo.rollout.vllm_server import ServerLaunch, VLLMServer, free_port
from clipo.rollout.vllm_server_launch import connect
from clipo.rollout.vllm_support import (
    GiB,
    check_head_size,
    kv_cache_bytes,
    kv_cache_problem,
    model_source,
    policy_dtype,
    request_seeds,
    vllm_available,
)


@ENGINES.register("vllm_server")
class VLLMServerEngine:
    """`rollout.engine=vllm_server`.

    Args:
        policy, tokenizer: the training policy (the source of the server's weights) and its tokenizer.
        url: a running server to attach to (started as the README says); None: rank 0 starts one.
        cpus: cores of a started server: "auto" (CPU training: the upper half of this process's cores, the
            training processes keep the rest), a list, or None (no pinning).
        cuda_devices: CUDA_VISIBLE_DEVICES of a started server; None: the trainer's.
        startup_timeout_s: how long a started server may take to answer.
        weight_transfer: vLLM weight-transfer backend: "auto" (gloo on CPU; on CUDA ipc when the server shares
            the trainer's GPU, nccl when it has its own), or a name.
        transfer_address, transfer_port: where the server's workers reach rank 0 for the weight transfer (port
            None: a free one).
        log_file: the started server's log.
        dtype, enforce_eager, max_model_len, kv_cache_gib, gpu_memory_utilization, seed: as `rollout.vllm`'s.
        args: more `vllm serve` arguments for a started server (e.g. ["--data-parallel-size", "2"]).
    """

    gives_hidden_states = False  # the server returns none: the collector's training forward takes them
    gives_sampling_logprobs = True  # the sampler's log-probs of the sampled tokens

    def __init__(self, policy: torch.nn.Module, tokenizer: Any, url: str | None = None, cpus: Any = "auto",
                 cuda_devices: str | None = None, startup_timeout_s: float = 300, weight_transfer: str = "auto",
                 transfer_address: str = "127.0.0.1", transfer_port: int | None = None,
                 log_file: str = "vllm_server.log", dtype: str | None = None,
                 enforce_eager: bool = True, max_model_len: int | None = None, kv_cache_gib: float | str = "auto",
                 gpu_memory_utilization: float = 0.3, seed: int = 0, args: list[str] | None = None) -> None:  # fmt: skip
        if not vllm_available():
            raise ImportError("rollout.engine=vllm_server needs vLLM (./scripts/setup.sh --vllm on a CPU machine)")
        if problem := kv_cache_problem(kv_cache_gib):
            raise ValueError(problem.replace("rollout.vllm.", "rollout.vllm_server."))
        check_head_size(policy)
        self.policy, self.tokenizer, self.url, self.cpus = policy, tokenizer, url, cpus
        self.cuda_devices, self.startup_timeout_s = cuda_devices, startup_timeout_s
        self.transfer_address, self.transfer_port = transfer_address, transfer_port
        self.log_file, self.dtype, self.enforce_eager, self.max_model_len = Path(log_file), dtype, enforce_eager, max_model_len
        self.kv_cache_gib, self.gpu_memory_utilization, self.seed = kv_cache_gib, gpu_memory_utilization, seed
        self.args = list(args or [])
        self.on_cuda = next(policy.parameters()).device.type == "cuda"
        self.weight_transfer = weight_transfer if weight_transfer != "auto" else self._transfer_backend()
        self.server: VLLMServer | None = None
        self.transfer: Any = None  # vLLM's trainer-side weight-transfer engine
        self.version = 0  # policy updates synced so far: the version each sampled rollout carries
        self.pushed: int | None = None  # the version the server holds
        self.pushes = 0

    # ---- the Protocol ---------------------------------------------------------------------------
    def generate(self, records: list[dict], group_size: int, sampling: Sampling,
                 hidden_layer: int | None = None) -> RolloutBatch:
        """`group_size` responses per record, each request of a prompt sent to the server at once."""
        prompts = prompt_texts(self.tokenizer, records)
        prompt_ids = self.tokenizer(prompts, add_special_tokens=False).input_ids
        if self.server is None:
            self._connect(len(records) * group_size, max(map(len, prompt_ids)) + sampling.max_new_tokens)
        self.push_weights()
        copies, n = (group_size, 1) if sampling.greedy else (1, group_size)  # vLLM samples greedily with n=1 only
        seeds = request_seeds(len(records) * copies, sampling.seed)
        bodies = [{"token_ids": ids, "sampling_params": self._params(sampling, n, seed)}
                  for ids, seed in zip(per_rollout(prompt_ids, copies), seeds)]  # fmt: skip
        with ThreadPoolExecutor(max_workers=min(len(bodies), 64)) as pool:
            answers = list(pool.map(lambda body: self.server.post("inference/v1/generate", body), bodies))
        choices = [c for answer in answers for c in sorted(answer["choices"], key=lambda c: c["index"])]
        responses = [c["token_ids"] for c in choices]
        logprobs = [[t["logprob"] for t in c["logprobs"]["content"]] for c in choices]
        versions = [min(int(span["version"]) for span in c["weight_versions"] or [{"version": -1}]) for c in choices]
        device = next(self.policy.parameters()).device
        return rollout_batch(responses, logprobs, prompt_ids, prompts, records, group_size, self.tokenizer,
                             self.eos_ids, device, versions)  # fmt: skip

    def sync_weights(self, policy: torch.nn.Module) -> None:
        """After an optimizer update: push `policy` now (every rank calls this: ZeRO-3 / FSDP gather)."""
        self.policy, self.version = policy, self.version + 1
        self.push_weights()

    def push_weights(self) -> None:
        """Push the current version if the server does not hold it (once connected); every rank waits for it."""
        if self.server is None or self.pushed == self.version:
            return
        rank, size = world()
        if size > 1:  # every rank is done sampling (the pipeline's batch ahead too) before rank 0 pauses the
            torch.distributed.barrier()  # server: a rank whose requests waited on the pause could not join the gathers
        if rank == 0:
            self.server.post("pause", params={"mode": "wait"})  # requests in flight finish on the old weights
        self.transfer.send_weights()
        if rank == 0:
            self.server.post("update_weight_version", {"new_version": str(self.version)})
            self.server.post("resume")
        if size > 1:
            torch.distributed.barrier()  # no rank samples before the server holds the new weights
        self.pushed, self.pushes = self.version, self.pushes + 1

    # ---- server and weights ---------------------------------------------------------------------
    @property
    def eos_ids(self) -> list[int]:
        eos = self.tokenizer.eos_token_id
        return list(eos) if isinstance(eos, (list, tuple)) else [eos]

    def _params(self, sampling: Sampling, n: int, seed: int) -> dict:
        return {"n": n, "temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": sampling.top_k or -1,
                "max_tokens": sampling.max_new_tokens, "stop_token_ids": self.eos_ids, "logprobs": 0, "seed": seed,
                "detokenize": False}  # fmt: skip

    def _transfer_backend(self) -> str:
        if not self.on_cuda:
            return "gloo"
        return "ipc" if self.cuda_devices is None else "nccl"  # NCCL cannot join two ranks on one GPU

    def _connect(self, rows: int, tokens_per_row: int) -> None:
        """Rank 0 starts (or attaches to) the server and tells the others its URL; then the weight transfer."""
        self.server, self.transfer = connect(self, rows, tokens_per_row)

    def launch(self, rows: int, tokens_per_row: int, cpus: list[int] | None) -> ServerLaunch:
        """How rank 0 starts the server: KV cache for every rank's `rows` sequences (CPU, `auto`)."""
        model, load_format, self._model_dir = model_source(self.policy)
        dtype = self.launch_dtype
        kv = None
        if not self.on_cuda:
            config, size = self.policy.config, world()[1]
            limit = self.max_model_len or config.max_position_embeddings
            kv = (int(float(self.kv_cache_gib) * GiB) if self.kv_cache_gib != "auto"
                  else kv_cache_bytes(config, getattr(torch, dtype), rows * size, tokens_per_row, limit))  # fmt: skip
        return ServerLaunch(model, load_format, dtype, self.max_model_len, kv, self.gpu_memory_utilization,
                            self.enforce_eager, self.seed, self.weight_transfer, cpus, self.cuda_devices,
                            self.log_file, self.args)  # fmt: skip

    @property
    def launch_dtype(self) -> str:
        """The server's weight dtype (the pushed tensors are cast to it)."""
        return policy_dtype(self.policy, self.dtype)

    def port(self) -> int:
        """The port rank 0 opens for the weight transfer."""
        return self.transfer_port or free_port()
