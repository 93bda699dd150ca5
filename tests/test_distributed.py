"""Data parallelism on CPU with the gloo backend: the ranks' pieces add up to one process's global batch."""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from clipo.advantages import reinforce_pp_advantages
from clipo.contrastive.sets import build_sets
from clipo.distributed import all_gather_rows, gathered_for_generation, globally_unique_groups, sum_over_ranks, world
from clipo.registry import LOSSES, register_components
from clipo.run.facts import StrategyKind
from tests.conftest import fresh_shell_env
from tests.ddp_replay import PLANS

REPLAY = Path(__file__).with_name("ddp_replay.py")
DDP_PLANS = list(PLANS)  # each a two-process DDP step against one process
# rank 0 holds groups 0 and 1, rank 1 group 2: unequal row counts exercise the padding
GROUPS = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
LABELS = torch.tensor([1, 1, 0, 1, 0, 1, 0, 0, 1, 0, 1, 1])
SPLIT = 8


def _spawn(worker, tmp_path: Path, nprocs: int = 2) -> None:
    mp.spawn(worker, args=(str(tmp_path / "rendezvous"),), nprocs=nprocs, join=True)


@contextmanager
def _process_group(rank: int, rendezvous: str):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _local_rows(rank: int) -> slice:
    return slice(0, SPLIT) if rank == 0 else slice(SPLIT, len(GROUPS))


def _gather_worker(rank: int, rendezvous: str) -> None:
    with _process_group(rank, rendezvous):
        assert world() == (rank, 2)
        rows = torch.full((rank + 1, 2), float(rank), requires_grad=True)  # 1 row on rank 0, 2 on rank 1
        gathered, local = all_gather_rows(rows)
        assert gathered.tolist() == [[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]]
        assert local == (slice(0, 1) if rank == 0 else slice(1, 3))
        gathered.sum().backward()
        assert torch.equal(rows.grad, torch.ones_like(rows))  # each rank back-propagates its own rows
        assert sum_over_ranks(torch.tensor([1.0, rank])).tolist() == [2.0, 1.0]
        assert globally_unique_groups(torch.tensor([0, 1])).tolist() == ([0, 2] if rank == 0 else [1, 3])


def test_all_gather_rows_pads_unequal_ranks_and_keeps_the_local_gradient(tmp_path):
    _spawn(_gather_worker, tmp_path)


def _loss_worker(rank: int, rendezvous: str) -> None:
    register_components()
    full = torch.nn.functional.normalize(torch.randn(len(GROUPS), 6, generator=torch.Generator().manual_seed(0)), dim=1)
    local = _local_rows(rank)
    with _process_group(rank, rendezvous):
        for name in ("infonce", "supcon", "supcon_in", "soft_nn", "triplet"):
            for level in ("cross", "batch"):
                # one process on the global batch; the gradient of this rank's anchors' losses
                reference_loss = LOSSES.get(name)(level=level, anchors="all", seed=3)
                z_full = full.clone().requires_grad_(True)
                sets = build_sets(LABELS, GROUPS, level, "all")
                expected, _ = reference_loss.compute(z_full, sets)
                (expected_grad,) = torch.autograd.grad(expected[local].sum(), z_full)
                # the same on this rank's rows, with the other rank's gathered
                loss = LOSSES.get(name)(level=level, anchors="all", seed=3)
                z_local = full[local].clone().requires_grad_(True)
                per_sample, batch_loss = loss(z_local, LABELS[local], GROUPS[local])
                per_sample.sum().backward()
                where = f"{name}/{level} on rank {rank}"
                assert expected[local].abs().sum() > 0, where
                torch.testing.assert_close(per_sample, expected[local].detach(), msg=where)
                local_anchors = sets.anchors[local].sum()
                torch.testing.assert_close(batch_loss, expected[local].sum().detach() / local_anchors, msg=where)
                torch.testing.assert_close(z_local.grad, expected_grad[local], msg=where)


def test_cross_and_batch_levels_score_every_ranks_rollouts_like_one_process(tmp_path):
    _spawn(_loss_worker, tmp_path)


def _advantage_worker(rank: int, rendezvous: str) -> None:
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.2, 1.0, 0.0, 0.7])
    expected = reinforce_pp_advantages(rewards, GROUPS)  # before the group exists: one process
    with _process_group(rank, rendezvous):
        local = _local_rows(rank)
        torch.testing.assert_close(reinforce_pp_advantages(rewards[local], GROUPS[local]), expected[local])


def test_reinforce_pp_whitens_over_the_global_batch(tmp_path):
    _spawn(_advantage_worker, tmp_path)


@pytest.fixture(scope="module")
def replayed(tmp_path_factory) -> Path:
    """Every plan of `tests/ddp_replay.py` in one launch of one process and one of two."""
    out_dir = tmp_path_factory.mktemp("ddp_replay")
    for devices in (1, 2):
        result = subprocess.run([sys.executable, str(REPLAY), str(out_dir), str(devices), *DDP_PLANS], cwd=out_dir,
                                capture_output=True, text=True, timeout=600, env=fresh_shell_env())
        assert result.returncode == 0, result.stderr[-4000:]
    return out_dir


@pytest.mark.parametrize("plan", DDP_PLANS)
def test_two_process_ddp_step_equals_one_process_on_the_global_batch(replayed, plan):
    one, two = (torch.load(replayed / f"{plan}.devices{devices}.pt") for devices in (1, 2))
    for key in ("train/reward", "train/shaped_reward", "actor/loss", "actor/pg_loss", "actor/grad_norm", "actor/entropy"):
        torch.testing.assert_close(two["metrics"][key], one["metrics"][key], rtol=1e-4, atol=1e-7, msg=key)
    assert one["metrics"]["actor/grad_norm"] > 0 and one["metrics"]["actor/loss"] != 0
    for name, weight in one["weights"].items():
        torch.testing.assert_close(two["weights"][name], weight, rtol=1e-5, atol=1e-7, msg=name)


def _zero3_worker(rank: int, rendezvous: str) -> None:
    import deepspeed
    from transformers import GenerationConfig

    from clipo.data import build_dataset
    from clipo.models import build_tiny
    from clipo.rollout import generate_rollouts

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(29500 + os.getpid() % 1000), RANK="0", WORLD_SIZE="1",
                      LOCAL_RANK="0")
    deepspeed.init_distributed(dist_backend="gloo", verbose=False)
    policy, tokenizer = build_tiny(seed=0)
    reference, _ = build_tiny(seed=0)
    config = {"train_micro_batch_size_per_gpu": 1, "zero_allow_untested_optimizer": True,
              "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0}}
    engine, *_ = deepspeed.initialize(model=policy, optimizer=torch.optim.SGD(policy.parameters(), lr=0.0),
                                      config=config)
    assert sum(p.numel() for p in engine.module.parameters()) == 0, "ZeRO-3 keeps only shards outside forward"
    records = list(build_dataset(source="arith", size=2, levels=[0], seed=0))
    generation = GenerationConfig(max_new_tokens=6, do_sample=True, temperature=1.0, top_k=0,
                                  pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    expected = generate_rollouts(reference, tokenizer, records, 3, generation, hidden_layer=-1)
    torch.manual_seed(0)
    with gathered_for_generation(StrategyKind.ZERO3, SimpleNamespace(model=engine), engine.module):
        assert sum(p.numel() for p in engine.module.parameters()) == sum(p.numel() for p in reference.parameters())
        got = generate_rollouts(engine.module, tokenizer, records, 3, generation, hidden_layer=-1)
    assert got.responses == expected.responses
    torch.testing.assert_close(got.hidden, expected.hidden)
    # afterwards the weights are shards again and ZeRO's hooks gather them for a forward pass
    assert sum(p.numel() for p in engine.module.parameters()) == 0
    ids = tokenizer(["1+1="], return_tensors="pt").input_ids
    torch.testing.assert_close(engine(input_ids=ids).logits, reference(input_ids=ids).logits)
    dist.destroy_process_group()


def test_zero3_generation_with_gathered_weights_matches_the_full_model(tmp_path):
    """A real DeepSpeed ZeRO-3 engine on CPU (one gloo process): generation inside the gathered
    context samples what the unsharded model samples, and the engine is sharded again after."""
    _spawn(_zero3_worker, tmp_path, nprocs=1)


def test_generation_gathers_zero3_weights_once_per_rollout_phase(monkeypatch):
    entered = []

    @contextmanager
    def fake_unwrap(model):
        entered.append(model)
        yield model

    monkeypatch.setattr("deepspeed.runtime.zero.unwrap_model_for_generation", fake_unwrap)
    engine = object()
    with gathered_for_generation(StrategyKind.ZERO3, SimpleNamespace(model=engine), None):
        pass
    assert entered == [engine]
    for kind in (StrategyKind.ZERO2, StrategyKind.DDP, StrategyKind.SINGLE):
        with gathered_for_generation(kind, SimpleNamespace(model=engine), None):
            pass
    assert entered == [engine]
