"""End-to-end: `train(cfg)` on the tiny model, offline, in seconds."""


import pytest
import torch

from clipo.models import build_tiny
from clipo.train import train
from tests.conftest import tiny_parity_config as _config


def _changed(before: dict, module: torch.nn.Module) -> bool:
    return any(not torch.equal(before[k], v) for k, v in module.state_dict().items())


@pytest.mark.parametrize("loss", ["infonce", "none"])
def test_two_steps_train_the_policy_and_write_everything(loss, parity_verifier, tmp_path, capsys):
    initial, _ = build_tiny(seed=0)
    before = {k: v.clone() for k, v in initial.state_dict().items()}
    metrics, objects = train(_config(tmp_path, f"loss={loss}"))

    module = objects["module"]
    assert objects["trainer"].global_step == 2
    assert _changed(before, module.policy), "the policy's weights did not change"
    for key in ("train/reward", "train/acc", "actor/pg_loss", "actor/grad_norm", "time/generate"):
        assert torch.isfinite(torch.tensor(metrics[key])), key
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert (tmp_path / "policy" / "config.json").is_file()
    assert (tmp_path / "csv" / "metrics.csv").is_file()
    assert "clipo run summary" in capsys.readouterr().out
    if loss == "infonce":
        assert 0 < metrics["contrastive/anchor_frac"] <= 1
        assert (tmp_path / "contrastive_head.pt").is_file()
    else:
        assert module.contrastive is None and "contrastive/loss" not in metrics


def test_exported_policy_loads_with_plain_transformers(parity_verifier, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, objects = train(_config(tmp_path, "trainer.max_steps=1", "data.val=null"))
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "policy")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "policy")
    assert tokenizer.eos_token == "<|im_end|>"
    for (name, a), b in zip(objects["module"].policy.state_dict().items(), exported.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
