"""`rollout.engine=vllm_server` on CPU: one vLLM server (started by clipo, the tiny model in fp32) samples like
the trainer and follows each weight push (vLLM's weight-transfer API over the gloo backend); one training
process and two (DDP, gloo) attached to it by URL train with the synchronous step and with
`rollout.max_staleness=1`; and a server that dies stops the run with an error naming it, the last checkpoint
kept. The server starts once for the session (`tests/rollout/conftest.py`). Skipped without vLLM."""

from __future__ import annotations

import json
import os
import signal

import lightning as L
import pytest
import torch

from clipo.data.arith import ArithDataset
from clipo.rollout import HFEngine, Sampling, forward_responses
from clipo.rollout.vllm_server import ServerError
from clipo.rollout.vllm_server_launch import split_cores, weight_transfer
from clipo.train import train
from tests.conftest import tiny_parity_config as _config
from tests.rollout.conftest import KL_TOL, LOGPROB_TOL, needs

pytestmark = needs("vllm")
RECORDS = ArithDataset(size=3, seed=0).records


def _trainer_logprobs(engine, batch, temperature):
    with torch.no_grad():
        return forward_responses(engine.policy, batch, temperature).logprobs


def test_the_server_samples_like_the_trainer_and_follows_each_push(vllm_server):
    engine = vllm_server
    # the trainings attached to this server meanwhile joined its weight transfer in turn: join it again, push
    engine.transfer = weight_transfer(engine, engine.server, rank=0)
    engine.sync_weights(engine.policy)
    version, pushes = engine.version, engine.pushes
    batch = engine.generate(RECORDS, 4, Sampling(max_new_tokens=16, temperature=0.7, seed=1))
    assert batch.groups.tolist() == [g for g in range(3) for _ in range(4)] and batch.hidden is None
    assert batch.versions.tolist() == [version] * 12
    diff = (_trainer_logprobs(vllm_server, batch, 0.7) - batch.sampling_logprobs)[batch.response_mask].abs()
    assert diff.max() < LOGPROB_TOL
    again = engine.generate(RECORDS, 4, Sampling(max_new_tokens=16, temperature=0.7, seed=1))
    assert torch.equal(again.sequences, batch.sequences)  # the same seed draws the same responses
    optimizer = torch.optim.Adam(engine.policy.parameters(), lr=3e-2)
    for _ in range(3):  # push the greedy tokens down: the next greedy responses must change
        target = HFEngine(engine.policy, engine.tokenizer).generate(RECORDS, 1, Sampling(max_new_tokens=8, temperature=0))
        forward_responses(engine.policy, target, 1.0).logprobs[target.response_mask].mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    engine.sync_weights(engine.policy)
    after = engine.generate(RECORDS, 4, Sampling(max_new_tokens=16, temperature=0.7, seed=1))
    assert after.versions.tolist() == [version + 1] * 12 and engine.pushes == pushes + 1
    diff = (_trainer_logprobs(vllm_server, after, 0.7) - after.sampling_logprobs)[after.response_mask].abs()
    assert diff.max() < LOGPROB_TOL
    greedy = engine.generate(RECORDS, 2, Sampling(max_new_tokens=8, temperature=0))
    hf = HFEngine(engine.policy, engine.tokenizer).generate(RECORDS, 2, Sampling(max_new_tokens=8, temperature=0))
    assert greedy.responses == hf.responses and torch.equal(greedy.response_mask, hf.response_mask)


def test_one_training_process_synchronous_and_one_step_ahead(vllm_server, parity_verifier, tmp_path):
    url = [f"rollout.vllm_server.url={vllm_server.server.url}", "rollout.engine=vllm_server", "data.val=null",
           "model.tiny.num_attention_heads=2", "model.tiny.num_key_value_heads=1", "optimizer.lr=1e-2"]  # fmt: skip
    _, sync = train(_config(tmp_path / "sync", *url, "trainer.max_steps=2"))
    _, ahead = train(_config(tmp_path / "ahead", *url, "trainer.max_steps=3", "rollout.max_staleness=1"))
    sync_rows, ahead_rows = sync["summary"].history, ahead["summary"].history
    for row in sync_rows:
        assert row["rollout_corr/logprob_diff_max"] < LOGPROB_TOL and row["rollout_corr/kl"] < KL_TOL
    # step 1 of the pipeline is sampled now, by the same start weights and request seeds: the synchronous step
    # (the server's log-probs may round otherwise in another batch; the trainer's numbers follow the tokens)
    for key in ("train/reward", "train/response_len", "actor/pg_loss", "actor/grad_norm"):
        assert ahead_rows[0][key] == pytest.approx(sync_rows[0][key], rel=1e-5), key
    assert [row["async/staleness_max"] for row in ahead_rows] == [0, 1, 1]
    for row in ahead_rows[1:]:  # sampled one update earlier: the correction against the sampler's log-probs acts
        assert row["rollout_corr/kl"] > 100 * KL_TOL and row["async/wait_s"] < row["async/sample_s"] + 1
    # a checkpoint keeps no rollouts in flight: the resumed run samples its first step now, then runs ahead
    checkpoint = tmp_path / "ahead" / "checkpoints" / "last.ckpt"
    _, resumed = train(_config(tmp_path / "resumed", *url, "trainer.max_steps=5", "rollout.max_staleness=1",
                               f"ckpt_path={checkpoint}"))  # fmt: skip
    assert [row["async/staleness_max"] for row in resumed["summary"].history][-2:] == [0, 1]


def test_two_training_processes_share_one_server(vllm_ranks):
    """Both ranks of a ZeRO-3 run (every parameter partitioned) sample from the server one step ahead; both
    gather the shards for each push, rank 0 sends."""
    ranks = vllm_ranks["server-async"]
    rows = ranks[0]["history"]
    assert [row["async/staleness_max"] for row in rows] == [0, 1, 1]
    assert rows[0]["rollout_corr/logprob_diff_max"] < LOGPROB_TOL  # both ranks sampled from the pushed weights
    assert [r["version"] for r in ranks] == [3, 3] and [r["pushes"] for r in ranks] == [4, 4]  # start + 3 updates
    for step in range(3):
        assert not set(ranks[0]["steps"][step]["prompts"]) & set(ranks[1]["steps"][step]["prompts"])


class KillServerAfterStep(L.Callback):
    """Kills the server process `pid` after the first RL step."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        os.killpg(self.pid, signal.SIGKILL)


def test_a_server_that_dies_stops_the_run_naming_it_and_the_last_checkpoint_stays(vllm_server, parity_verifier,
                                                                                   tmp_path):  # fmt: skip
    """Last of the server's tests: it kills the session's server."""
    killer = f"+callbacks.kill={{_target_:{__name__}.KillServerAfterStep,pid:{vllm_server.server.process.pid}}}"
    cfg = _config(tmp_path, "rollout.engine=vllm_server", f"rollout.vllm_server.url={vllm_server.server.url}",
                  "model.tiny.num_attention_heads=2", "model.tiny.num_key_value_heads=1", "data.val=null",
                  "trainer.max_steps=3", killer)  # fmt: skip
    with pytest.raises(ServerError, match=f"the vLLM server at {vllm_server.server.url} .*is not answering"):
        train(cfg)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["crashed"] and vllm_server.server.url in summary["error"] and summary["step"] == 1
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()  # the state after step 1
    with pytest.raises(ServerError, match=rf"pid {vllm_server.server.process.pid}, started by clipo.*exited with code"):
        vllm_server.generate(RECORDS, 2, Sampling(max_new_tokens=4))


def test_the_server_gets_the_upper_half_of_the_cores_and_training_the_rest(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert split_cores("auto", on_cuda=False) == ([2, 3], [0, 1])
    assert split_cores([3], on_cuda=False) == ([3], [0, 1, 2])
    assert split_cores("auto", on_cuda=True) == (None, None) and split_cores(None, on_cuda=False) == (None, None)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {5})
    assert split_cores("auto", on_cuda=False) == (None, None)  # one core: nothing to split
