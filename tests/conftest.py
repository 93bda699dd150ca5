"""Shared fixtures: compose the Hydra config as `train.py` would, offline and fast."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig, open_dict

from clipo.compose import CONFIG_DIR as _CONFIG_DIR
from clipo.compose import compose

CONFIG_DIR = str(_CONFIG_DIR)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The tiny model's matmuls are too small to gain from threads, and on a busy 2-core machine
# a second thread makes them several times slower; subprocesses inherit the variable.
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)

# A small, fast training config: the tiny random model, few prompts, short responses.
TINY_OVERRIDES = [
    "model=tiny",
    "trainer.max_steps=2",
    "trainer.precision=32",
    "data.prompts_per_step=2",
    "rollout.group_size=4",
    "rollout.max_new_tokens=12",
    "ppo.micro_batch_size=4",
    "ppo.max_tokens_per_micro_batch=null",  # micro_batch_size above counts (as by default), not a token budget
    "validation.before_training=false",
    "data.train.size=64",
    "data.val.arith.size=4",
    "data.val.arith_p1.size=4",
]


def compose_config(overrides: list[str] | None = None, output_dir: Path | None = None) -> DictConfig:
    """Compose configs/train.yaml with overrides, with the Hydra runtime set as in a real run."""
    return compose(overrides, output_dir)


@pytest.fixture
def cfg_tiny(tmp_path: Path) -> DictConfig:
    return compose_config(TINY_OVERRIDES, output_dir=tmp_path)


class ParityVerifier:
    """Scores by the first character's code parity: about half the random tiny model's rollouts are
    "correct", so groups have both kinds and every part of the step gets signal."""

    def __call__(self, responses: list[str], ground_truths: list[str]) -> list[float]:
        return [float(bool(r) and ord(r[0]) % 2 == 0) for r in responses]

    def stats(self) -> dict[str, int]:
        return {}

    def close(self) -> None:
        pass


@pytest.fixture
def parity_verifier(monkeypatch):
    """Registers `ParityVerifier` as "parity" for one test."""
    from clipo.registry import VERIFIERS

    monkeypatch.setitem(VERIFIERS._entries, "parity", ParityVerifier)


def tiny_parity_config(output_dir: Path, *overrides: str) -> DictConfig:
    """The tiny training config scored by `ParityVerifier` (use with the `parity_verifier` fixture)."""
    cfg = compose_config(TINY_OVERRIDES + list(overrides), output_dir=output_dir)
    with open_dict(cfg):
        cfg.verifier = {"name": "parity"}
    return cfg


def free_port() -> int:
    """A TCP port the OS just handed out, for DDP runs in subprocesses (parallel runs on one
    machine collide on Lightning's own choice)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# What an in-process DDP or vLLM set-up leaves in this process's environment; a child started with
# it would think torchrun had launched it (Lightning then waits for ranks that never start).
LAUNCHER_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "NODE_RANK", "GROUP_RANK",
                      "MASTER_ADDR", "MASTER_PORT")


def fresh_shell_env(**extra: str) -> dict[str, str]:
    """os.environ as a fresh shell would have it for a clipo command: no launcher variables, a free port."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    return {**env, "MASTER_PORT": str(free_port()), **extra}


def with_callback(init, callback):  # noqa: ANN001, ANN202
    """`L.Trainer.__init__` (`init`) that adds `callback` to the Trainer's callbacks (the helper scripts' recorders)."""
    def patched(self, *args, callbacks=None, **kwargs):  # noqa: ANN001, ANN002, ANN003
        init(self, *args, callbacks=[*(callbacks or []), callback], **kwargs)

    return patched
