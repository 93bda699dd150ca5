"""Refactors keep the numbers: the weights after a tiny run equal those recorded before the change.

The digests were recorded with the RL step as one LightningModule method (before the
collector/updater split) and reproduced after it; they are bit-exact on CPU with one thread
(conftest), so they are only checked with the torch build they were recorded with. A change
that alters the numbers on purpose records new digests here and says why in its commit.
"""

import hashlib

import pytest
import torch

from clipo.train import train
from tests.conftest import tiny_parity_config

RECORDED_WITH = "2.13.0+cpu"
CASES = {
    # reward mode with a learned (attention) pooler, head warm-up, 2 epochs of 2 mini-batches, old log-probs
    "reward_epochs": (
        ["ppo.mini_batch_size=4", "ppo.micro_batch_size=2", "ppo.epochs=2", "contrastive.head_warmup_steps=1",
         "trainer.max_steps=3", "pooler=attention"],
        "3f2d66fc5ae54076",
    ),
    # DAPO with dynamic sampling that refills, loss mode (the contrastive term in the policy loss)
    "dapo_loss": (
        ["algorithm=dapo", "rollout.group_size=2", "ppo.micro_batch_size=2", "contrastive.mode=loss", "loss=supcon"],
        "5cbdba3537fdaec7",
    ),
}


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 of the policy's and the contrastive objective's tensors, in state_dict order (names left out)."""
    digest = hashlib.sha256()
    for part in (module.policy, module.contrastive):
        for value in part.state_dict().values():
            if isinstance(value, dict):  # a loss's extra state: its RNG
                value = value.get("generator")
            if isinstance(value, torch.Tensor):
                digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


@pytest.mark.skipif(torch.__version__ != RECORDED_WITH, reason=f"digests recorded with torch {RECORDED_WITH}")
@pytest.mark.parametrize("case", sorted(CASES))
def test_weights_after_a_tiny_run_are_unchanged(case, parity_verifier, tmp_path):
    overrides, recorded = CASES[case]
    _, objects = train(tiny_parity_config(tmp_path, "data.val=null", *overrides))
    assert weights_digest(objects["module"]) == recorded
