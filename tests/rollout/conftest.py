"""The vLLM set-ups that several test files share, each made once per session: one vLLM server (started by
clipo, the tiny model in fp32; tens of seconds) and one launch of two training processes that runs, one
after another, colocated trainings under every strategy and the asynchronous pipeline on that server."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clipo.data.arith import ArithDataset
from clipo.models import load_model
from clipo.rollout import Sampling
from tests.conftest import fresh_shell_env

TINY_VLLM = {"num_attention_heads": 2, "num_key_value_heads": 1}  # head size 32: vLLM's CPU attention runs it
RANKS_SCRIPT = Path(__file__).resolve().parents[1] / "vllm_ranks.py"
COLOCATED = ["ddp", "zero2", "zero3", "fsdp", "ddp-async"]
ON_SERVER = ["server-async"]
# The engines' log-probs against the trainer's, same fp32 weights: vLLM's kernels (oneDNN GEMMs, its paged
# attention) sum in another order than torch's. A log-prob is a log-softmax over logits that are dot products
# of length 64 (the tiny model's width); fp32 rounds each of its ~2 x 64 x layers operations by at most
# 2^-24 relative, so over the tiny model's 2 layers the two agree to about 1e-6 (measured: 4.8e-7 to 9.5e-7).
# 1e-4 leaves 100x room; an engine still on the weights before an update (Adam at lr 1e-2: each weight moves
# by up to 1e-2) is off by far more. The k3 KL estimate of a difference d is about d^2 / 2.
LOGPROB_TOL = 1e-4
KL_TOL = LOGPROB_TOL**2 / 2


def needs(*packages: str):
    missing = [p for p in packages if importlib.util.find_spec(p) is None]
    return pytest.mark.skipif(bool(missing), reason=f"needs {', '.join(missing)} (./scripts/setup.sh --dev --vllm)")


@pytest.fixture(scope="session")
def vllm_server():
    """A `VLLMServerEngine` whose server is up (the first generation started it)."""
    from clipo.rollout.vllm_server_engine import VLLMServerEngine

    policy, tokenizer = load_model("tiny", tiny=TINY_VLLM)
    folder = Path(__import__("tempfile").mkdtemp(prefix="clipo-vllm-server-"))
    # cpus=None: the test process keeps its cores (a started server would otherwise confine it)
    engine = VLLMServerEngine(policy, tokenizer, cpus=None, max_model_len=256, log_file=str(folder / "server.log"))
    engine.generate(ArithDataset(size=1, seed=0).records, 2, Sampling(max_new_tokens=2))
    yield engine
    engine.server.stop()


@pytest.fixture(scope="session")
def vllm_ranks(vllm_server, tmp_path_factory) -> dict[str, list[dict]]:
    """Every plan's record of each rank (tests/vllm_ranks.py), from one launch of two processes."""
    out = tmp_path_factory.mktemp("vllm_ranks")
    command = [sys.executable, str(RANKS_SCRIPT), str(out), "2", *COLOCATED, *ON_SERVER, "--",
               f"rollout.vllm_server.url={vllm_server.server.url}"]  # fmt: skip
    result = subprocess.run(command, cwd=out, capture_output=True, text=True, timeout=1200, env=fresh_shell_env())
    assert result.returncode == 0, result.stderr[-6000:]
    plans = COLOCATED + ON_SERVER
    return {name: [torch.load(out / f"{name}.rank{r}.pt", weights_only=False) for r in (0, 1)] for name in plans}
