"""Refactors keep the numbers: the update a tiny run makes equals the one recorded before the change.

What is compared is the run's update, `weights after - weights at start`, of the policy and of the
contrastive objective, summarised per part as its norm and its projections on four fixed random
directions (`update_fingerprint`). Float32 kernels round differently on each CPU kind (AVX2,
AVX-512, AVX-512 BF16), so the comparison has a tolerance: every entry within `RTOL` x the part's
recorded update norm. Measured on an AMD EPYC with AVX-512 BF16 (one thread, fp32):

- starting from weights perturbed by one ulp (every parameter times 1 +- 2^-23) moves the
  fingerprint by at most 1.4e-7 of the norm: a kernel's rounding stays 70x inside the tolerance
  (`test_an_ulp_scale_difference_stays_inside_the_tolerance`);
- CLIPO's `contrastive.lam` 0.2 -> 0.21 moves it by 4.9e-5 and a learning rate 1% higher by 1e-2:
  a changed formula or constant is 5x to 1000x outside (`test_a_changed_formula_is_caught`).

The fingerprints were recorded with the RL step as it stood after issue #18 (shared-prompt forward,
chunked log-probs), replacing bit-exact digests that held on one CPU kind only. A change that alters
the numbers on purpose records new fingerprints here and says why in its commit.
"""

import pytest
import torch

import clipo.run.assembly
import clipo.train
from tests.conftest import tiny_parity_config

RTOL = 1e-5  # of each part's update norm
CASES = {
    # reward mode with a learned (attention) pooler, head warm-up, 2 epochs of 2 mini-batches, old log-probs
    "reward_epochs": ["ppo.mini_batch_size=4", "ppo.micro_batch_size=2", "ppo.epochs=2",
                      "contrastive.head_warmup_steps=1", "trainer.max_steps=3", "pooler=attention"],
    # DAPO with dynamic sampling that refills, loss mode (the contrastive term in the policy loss)
    "dapo_loss": ["algorithm=dapo", "rollout.group_size=2", "ppo.micro_batch_size=2", "contrastive.mode=loss",
                  "loss=supcon"],
}
RECORDED = {  # per part (policy, contrastive): [update norm, 4 projections]
    "reward_epochs": [
        [0.016839364774610673, 1.8504443958612773e-05, 0.00011426463878771043, -2.7231845540728946e-05,
         0.00012756989355549453],
        [0.23906207530436668, 0.0007919586626867677, 0.0009401503174873149, -0.000911620416641352,
         -0.00025851340266063035],
    ],
    "dapo_loss": [
        [0.004521178089640815, -1.8892051595159814e-06, -3.62158249033674e-05, -3.402644992028451e-06,
         8.342099395383938e-06],
        [0.0002611547702921562, -1.7901128342236986e-07, 1.6547383910844996e-06, 3.733121662734214e-07,
         -2.4774415909568437e-06],
    ],
}


def _float_tensors(part: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().double().clone() for k, v in part.state_dict().items()
            if isinstance(v, torch.Tensor) and v.is_floating_point()}


def update_fingerprint(start: dict[str, torch.Tensor], end: dict[str, torch.Tensor]) -> list[float]:
    """[norm, 4 projections] of the update `end - start` (float64), on directions fixed by seed 0."""
    update = torch.cat([(end[k] - start[k]).flatten() for k in start])
    directions = torch.randn(4, update.numel(), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return [update.norm().item(), *(directions @ update / update.numel() ** 0.5).tolist()]


def run_fingerprint(monkeypatch, tmp_path, case: str, *extra: str, start_perturbation=None) -> list[list[float]]:
    """Train the case; the fingerprint of each part's update from the weights the builders made."""
    starts = {}
    build = clipo.run.assembly.build_module

    def recording_build(*args):
        module = build(*args)
        if start_perturbation is not None:
            start_perturbation(module.policy)
        starts.update(policy=_float_tensors(module.policy), contrastive=_float_tensors(module.contrastive))
        return module

    monkeypatch.setattr(clipo.run.assembly, "build_module", recording_build)
    _, objects = clipo.train.train(tiny_parity_config(tmp_path, "data.val=null", *CASES[case], *extra))
    module = objects["module"]
    return [update_fingerprint(starts[name], _float_tensors(getattr(module, name))) for name in starts]


def relative_differences(got: list[list[float]], recorded: list[list[float]]) -> list[float]:
    """Per part: the largest entry difference over the recorded update norm."""
    return [max(abs(g - r) for g, r in zip(part, ref)) / max(ref[0], 1e-6) for part, ref in zip(got, recorded)]


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_update_of_a_tiny_run_is_unchanged(case, parity_verifier, tmp_path, monkeypatch):
    differences = relative_differences(run_fingerprint(monkeypatch, tmp_path, case), RECORDED[case])
    assert max(differences) <= RTOL, f"update moved by {differences} of its norm (policy, contrastive)"


def _one_ulp(policy: torch.nn.Module) -> None:
    """Every parameter times 1 - 2^-23, 1 or 1 + 2^-23 (seeded): the scale of a kernel's rounding."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in policy.parameters():
            param.mul_(1 + 2.0**-23 * torch.randint(-1, 2, param.shape, generator=generator).to(param.dtype))


def test_an_ulp_scale_difference_stays_inside_the_tolerance(parity_verifier, tmp_path, monkeypatch):
    base = run_fingerprint(monkeypatch, tmp_path / "base", "reward_epochs")
    perturbed = run_fingerprint(monkeypatch, tmp_path / "ulp", "reward_epochs", start_perturbation=_one_ulp)
    differences = relative_differences(perturbed, base)
    assert 0 < max(differences) <= RTOL / 10  # it does move the numbers, far less than the tolerance


def test_a_changed_formula_is_caught(parity_verifier, tmp_path, monkeypatch):
    changed = run_fingerprint(monkeypatch, tmp_path, "reward_epochs", "contrastive.lam=0.21")  # was 0.2
    assert max(relative_differences(changed, RECORDED["reward_epochs"])) > 2 * RTOL
