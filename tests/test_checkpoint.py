"""Checkpoint and resume: the head, its optimizer, the warm-up counter and the RNG come back."""

import torch

from clipo.train import train
from tests.conftest import tiny_parity_config as _config


def _params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def test_resumed_run_matches_an_uninterrupted_one(parity_verifier, tmp_path):
    overrides = ["trainer.max_steps=3", "data.val=null", "contrastive.head_warmup_steps=1"]
    _, full = train(_config(tmp_path / "full", *overrides))

    _config_first = _config(tmp_path / "first", *overrides)
    _config_first.trainer.max_steps = 2  # the first run stops after step 2 (1 head-only + 1 policy update)
    _, first = train(_config_first)
    checkpoint = tmp_path / "first" / "checkpoints" / "last.ckpt"
    saved = torch.load(checkpoint, weights_only=False)
    assert saved["clipo"]["rl_step"] == 3 and saved["clipo"]["head_optimizer"] is not None

    _, resumed = train(_config(tmp_path / "resumed", *overrides, f"ckpt_path={checkpoint}"))
    full_module, resumed_module = full["module"], resumed["module"]
    assert resumed_module.rl_step == full_module.rl_step == 4  # 1 warm-up step + 3 policy updates
    head_steps = lambda m: [s["step"] for s in m.head_optimizer.state_dict()["state"].values()]  # noqa: E731
    assert head_steps(resumed_module) == head_steps(full_module)
    for name, value in _params(full_module).items():
        torch.testing.assert_close(_params(resumed_module)[name], value, rtol=0, atol=0, msg=name)
    # the summary's history is part of the checkpoint too, so it reads as one run
    rewards = lambda run: [row["train/reward"] for row in run["summary"].history]  # noqa: E731
    assert rewards(resumed) == rewards(full) and len(rewards(full)) == 4
