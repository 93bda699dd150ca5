"""A vLLM server for `rollout.engine=vllm_server`: vLLM's own OpenAI-compatible server, started by clipo
(a subprocess pinned to its own cores) or attached by URL.

It is started with the routes clipo uses: token ids in, token ids and the sampler's log-probs out
(`/inference/v1/generate`, `--tokens-only`), and the RL routes (`VLLM_SERVER_DEV_MODE=1`: `/pause`,
`/resume`, the weight-transfer lifecycle, `/update_weight_version`). Every call goes through `post`, so
a server that died or stopped answering stops the run with an error naming it (its URL, process, exit
code and log); the crash path then keeps the last checkpoint.
"""

from __future__ import annotations

import atexit
import ctypes
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import clipo

HEALTH_POLL_S = 1.0


class ServerError(RuntimeError):
    """The vLLM server died, stopped answering, or refused a request."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerLaunch:
    """What clipo starts: the model (a folder or hub id, its load format), the engine settings, the cores
    (None: the process's own) and where its log goes."""

    model: str
    load_format: str
    dtype: str
    max_model_len: int | None
    kv_cache_bytes: int | None
    gpu_memory_utilization: float
    enforce_eager: bool
    seed: int
    weight_transfer: str
    cpus: list[int] | None
    cuda_devices: str | None
    log_file: Path
    extra_args: list[str] = dataclasses.field(default_factory=list)

    def command(self, port: int) -> list[str]:
        args = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model,
            "--load-format", self.load_format, "--dtype", self.dtype, "--host", "127.0.0.1", "--port", str(port),
            "--seed", str(self.seed), "--skip-tokenizer-init", "--tokens-only", "--generation-config", "vllm",
            "--logprobs-mode", "processed_logprobs", "--enable-prefix-caching",
            "--worker-extension-cls", "clipo.rollout.vllm_weight_sync.GlooWeightSyncExtension",
            "--weight-transfer-config", json.dumps({"backend": self.weight_transfer}),
            "--gpu-memory-utilization", str(self.gpu_memory_utilization),
        ]  # fmt: skip
        if self.enforce_eager:
            args.append("--enforce-eager")
        if self.max_model_len:
            args += ["--max-model-len", str(self.max_model_len)]
        if self.kv_cache_bytes:
            args += ["--kv-cache-memory-bytes", str(self.kv_cache_bytes)]
        return args + list(self.extra_args)

    def environment(self) -> dict[str, str]:
        """The server sees the same clipo as this process (its worker imports the gloo backend from it)."""
        source = str(Path(clipo.__file__).resolve().parents[1])
        path = os.pathsep.join([source, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env = {**os.environ, "PYTHONPATH": path, "VLLM_SERVER_DEV_MODE": "1"}
        if self.cpus:
            env["OMP_NUM_THREADS"] = str(len(self.cpus))
        if self.cuda_devices is not None:
            env["CUDA_VISIBLE_DEVICES"] = str(self.cuda_devices)
        if self.weight_transfer == "ipc":  # vLLM's CUDA-IPC backend sends pickled handles over HTTP
            env["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"
        return env


def _child_setup(cpus: list[int] | None) -> Any:
    """In the child before exec: SIGTERM when the thread that started it dies (even by SIGKILL, e.g. Lightning
    ending a failed run's ranks), and its cores."""

    def setup() -> None:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if cpus:
            os.sched_setaffinity(0, cpus)

    return setup


class VLLMServer:
    """A running server: `url`, and the process and log when clipo started it."""

    def __init__(self, url: str, process: subprocess.Popen | None = None, log_file: Path | None = None,
                 label: str | None = None) -> None:
        self.url, self.process, self.log_file, self.label = url.rstrip("/"), process, log_file, label

    @classmethod
    def start(cls, launch: ServerLaunch, timeout_s: float) -> VLLMServer:
        """Start it and wait until it answers `/health` (vLLM's start-up loads the model: seconds to minutes)."""
        port = free_port()
        launch.log_file.parent.mkdir(parents=True, exist_ok=True)
        log = open(launch.log_file, "ab")  # noqa: SIM115 (the child writes it for its whole life)
        process = subprocess.Popen(launch.command(port), env=launch.environment(), stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True, preexec_fn=_child_setup(launch.cpus))  # fmt: skip
        server = cls(f"http://127.0.0.1:{port}", process, launch.log_file)
        atexit.register(server.stop)
        server.wait_until_healthy(timeout_s)
        return server

    def wait_until_healthy(self, timeout_s: float) -> None:
        import requests

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._check_process()
            try:
                if requests.get(f"{self.url}/health", timeout=5).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(HEALTH_POLL_S)
        self.stop()
        raise ServerError(f"{self.name} did not answer /health within {timeout_s:.0f} s; raise "
                          "rollout.vllm_server.startup_timeout_s or read its log")

    @property
    def name(self) -> str:
        """How errors name it: URL, and process and log when clipo started it."""
        if self.process is None:
            return f"the vLLM server at {self.url} ({self.label or 'attached by rollout.vllm_server.url'})"
        return f"the vLLM server at {self.url} (pid {self.process.pid}, started by clipo; its log: {self.log_file})"

    def get(self, path: str) -> Any:
        return self.post(path, method="get")

    def post(self, path: str, body: dict | None = None, params: dict | None = None, timeout: float = 600,
             method: str = "post") -> Any:
        """POST (or GET) `path`; its JSON answer (None when empty). Any failure is a `ServerError` naming it."""
        import requests

        self._check_process()
        try:
            response = requests.request(method, f"{self.url}/{path}", json=body, params=params, timeout=timeout)
        except requests.RequestException as error:
            self._check_process()
            raise ServerError(f"{self.name} is not answering ({type(error).__name__} on /{path}): {error}") from error
        if not response.ok:
            self._check_process()
            raise ServerError(f"{self.name} answered /{path} with HTTP {response.status_code}: {response.text[:500]}")
        return response.json() if response.content else None

    def _check_process(self) -> None:
        if self.process is not None and (code := self.process.poll()) is not None:
            raise ServerError(f"{self.name} exited with code {code} during training; the last checkpoint stays: "
                              "read its log, then resume with ckpt_path=last")

    def stop(self) -> None:
        """Stop a server clipo started (its whole process group: API server, engine core, workers)."""
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        except ProcessLookupError:
            pass
