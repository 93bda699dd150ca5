"""The validation sets a training run scores: how it generates, each set's verifier, twins and metrics."""

from __future__ import annotations

import lightning as L
import torch

from clipo.evaluation.scoring import SetMetrics, answer_extractor, robustness_table, score_batch
from clipo.interfaces import RolloutEngine, Verifier
from clipo.rollout.sampling import Sampling


class Validation(torch.nn.Module):
    """Per-set accuracy (mean@n), pass@k, maj@k and robustness gaps, accumulated over a validation pass.

    A module so that Lightning moves its torchmetrics states to the policy's device.

    Args:
        engine: the rollout engine (validation generates as training does).
        sampling: validation's sampling (greedy by default).
        verifiers: each set's verifier, by set name.
        twins: each set's perturbed twins, by set name (the robustness gaps).
        n: samples per problem.
        ks: the k of pass@k and maj@k.
    """

    def __init__(self, engine: RolloutEngine, sampling: Sampling, verifiers: dict[str, Verifier],
                 twins: dict[str, list[str]], n: int = 1, ks: list[int] | None = None) -> None:
        super().__init__()
        self.engine, self.sampling, self.verifiers, self.twins, self.n = engine, sampling, verifiers, twins, n
        self.set_metrics = torch.nn.ModuleDict({name: SetMetrics(n, ks or []) for name in verifiers})

    def score(self, records: list[dict], name: str, device: torch.device) -> None:
        """Generate and verify one batch of the set `name`, adding it to the set's metrics (inside the
        generation context the module holds for the whole pass: ranks may hold different numbers of batches)."""
        verifier = self.verifiers[name]
        scores = score_batch(self.engine, records, verifier, answer_extractor(verifier), self.sampling, self.n)
        self.set_metrics[name].update(scores.correct.to(device), scores.answers)

    def compute(self) -> dict[str, float]:
        """The pass's metrics (`val/<set>/<metric>`, gaps, averages over sets); resets for the next pass."""
        per_set = {name: {k: float(v) for k, v in m.compute().items()} for name, m in self.set_metrics.items()}
        logged = {f"val/{name}/{key}": value for name, values in per_set.items() for key, value in values.items()}
        table = robustness_table(per_set, self.twins)
        logged |= {f"val/gap/{name}/{twin}": row["gap"] for (name, twin), row in table["gaps"].items()}
        logged |= {f"val/avg/{key}": value for key, value in table["average"].items()}
        for metrics in self.set_metrics.values():
            metrics.reset()
        return logged

    def close(self) -> None:
        """Close each verifier's worker pool (a verifier shared with training too: closing is idempotent)."""
        for verifier in {id(v): v for v in self.verifiers.values()}.values():
            verifier.close()


def final_validation(trainer: L.Trainer, module: L.LightningModule, datamodule: L.LightningDataModule) -> dict[str, float]:
    """The final weights' validation: the one fit ran at its last step (val_check_interval dividing
    max_steps), or a new pass."""
    if module.last_validation is not None and module.rl_step > 0 and module.last_validation[0] == module.rl_step:
        return dict(module.last_validation[1])
    return validation_pass(trainer, module, datamodule)


def validation_pass(trainer: L.Trainer, module: L.LightningModule, datamodule: L.LightningDataModule) -> dict[str, float]:
    results = trainer.validate(module, datamodule=datamodule, verbose=False)
    return {k: float(v) for result in results for k, v in result.items()}
