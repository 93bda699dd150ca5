"""The hf engine samples from weights as they are held, never through autocast: a trainer's bf16-mixed
context leaves its rollouts unchanged, and with a bf16 copy it samples (and captures CLIPO's states) there."""

from __future__ import annotations

import torch

from clipo.models import build_tiny
from clipo.rollout.hf_engine import HFEngine
from clipo.rollout.sampling import Sampling
from clipo.run.working_copy import WorkingCopy

RECORDS = [{"messages": [{"role": "user", "content": f"{a}+{b}="}], "ground_truth": str(a + b)} for a, b in [(2, 3), (4, 1)]]


def test_an_outer_autocast_does_not_reach_sampling():
    policy, tokenizer = build_tiny()
    engine = HFEngine(policy, tokenizer)
    sampling = Sampling(max_new_tokens=8, temperature=1.0, seed=3)
    plain = engine.generate(RECORDS, 3, sampling, hidden_layer=-1)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # Lightning's bf16-mixed wraps the training step so
        inside = engine.generate(RECORDS, 3, sampling, hidden_layer=-1)
    assert torch.equal(inside.sequences, plain.sequences)
    assert inside.hidden.dtype == torch.float32 and torch.equal(inside.hidden, plain.hidden)


def test_with_a_copy_it_samples_from_the_copy():
    policy, tokenizer = build_tiny()
    copy = WorkingCopy(policy)
    sampling = Sampling(max_new_tokens=8, temperature=1.0, seed=3)
    from_copy = HFEngine(policy, tokenizer, sampler=copy.module).generate(RECORDS, 3, sampling, hidden_layer=-1)
    direct = HFEngine(copy.module, tokenizer).generate(RECORDS, 3, sampling, hidden_layer=-1)
    assert torch.equal(from_copy.sequences, direct.sequences)
    assert from_copy.hidden.dtype == torch.bfloat16  # the copy's own states, pooled in float32 by CLIPO
