"""Every `algorithm=` option trains the tiny model, with and without CLIPO; the KL term decides the reference."""

import pytest
import torch

from clipo.builders import build_module
from clipo.train import train
from tests.conftest import TINY_OVERRIDES, compose_config
from tests.conftest import tiny_parity_config as _config


@pytest.mark.parametrize("loss", ["none", "infonce"])
@pytest.mark.parametrize("algorithm", ["grpo", "dapo", "gspo", "gmpo"])
def test_algorithm_trains_two_steps(algorithm, loss, parity_verifier, tmp_path):
    extra = ["sampling.overlong_buffer=4"] if algorithm == "dapo" else []
    metrics, objects = train(_config(tmp_path, f"algorithm={algorithm}", f"loss={loss}", "data.val=null", *extra))
    assert objects["trainer"].global_step == 2
    for key in ("actor/pg_loss", "actor/clip_frac_low", "actor/clip_frac_high", "actor/approx_kl", "actor/entropy"):
        assert torch.isfinite(torch.tensor(metrics[key])), key
    if algorithm == "dapo":
        assert metrics["dapo/informative_group_frac"] == 1.0 or metrics["dapo/limit_hit"] == 1.0


def test_reference_is_loaded_only_with_a_kl_term(parity_verifier, tmp_path):
    without = build_module(compose_config(TINY_OVERRIDES, output_dir=tmp_path))
    assert without.reference is None
    metrics, objects = train(_config(tmp_path, "algorithm.kl_coef=0.1", "data.val=null"))
    reference = objects["module"].reference
    assert reference is not None and not any(p.requires_grad for p in reference.parameters())
    assert metrics["actor/kl"] >= 0
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert not any(k.startswith("reference.") for k in saved["state_dict"])  # frozen weights are not stored


# each newer loss trains one step, paired with a newer advantage estimator (two parts for one run)
PAIRS = [
    ("cispo", "advantage.scale=batch"), ("sapo", "advantage=opo"),
    ("vespo", "advantage=reinforce_pp advantage.whiten_over=tokens"), ("luspo", "advantage=grpo_passk"),
    ("gpg", "advantage=gpg"), ("dro", "advantage=gdpo"), ("clip_cov", "advantage=reinforce_pp advantage.baseline=none"),
    ("kl_cov", None), ("dppo_tv", None), ("dppo_kl", None),
    ("conspo", None), ("conspo", "loss=infonce"), ("conspo", "loss=infonce contrastive.mode=loss"),
]


@pytest.mark.parametrize("algorithm,extra", PAIRS)
def test_newer_parts_train_one_step(algorithm, extra, parity_verifier, tmp_path):
    overrides = [f"algorithm={algorithm}", "trainer.max_steps=1", "data.val=null", *(extra or "loss=none").split()]
    if "loss=" not in (extra or "loss=none"):
        overrides.append("loss=none")
    metrics, objects = train(_config(tmp_path, *overrides))
    assert objects["trainer"].global_step == 1
    for key in ("actor/pg_loss", "actor/grad_norm", "actor/entropy"):
        assert torch.isfinite(torch.tensor(metrics[key])), key
    assert metrics["actor/grad_norm"] > 0  # the loss reached the policy
    if algorithm == "conspo":
        assert metrics["conspo/margin"] == 0.0  # step 0 of the curriculum (trainer.max_steps=1)
