"""The metric a run returns to Hydra: what `hydra/sweeper=optuna` optimises (`optimized_metric`).

`auto` is the held-out accuracy after training on the first validation set of `data.val`
(`val/<set>/acc`, mean@n over its problems, scored after the last step); without validation sets,
the last step's `train/reward`. Any other key of the final metrics (summary.json's `metrics`) may be
named, e.g. `val/arith_p1/acc` or `val_before/arith/acc`. A name that cannot be in the final metrics
is a configuration error before any model loads.
"""

from __future__ import annotations

import logging
import math

from omegaconf import DictConfig

from clipo.config import ConfigError

log = logging.getLogger(__name__)

# validation metrics over all sets: val/avg/acc, val/gap/<set>/<twin>
AGGREGATES = ("avg", "gap")


def objective_name(cfg: DictConfig) -> str:
    """The final metric `optimized_metric` names (`auto` resolved); a validation metric must name a set of `data.val`."""
    name = str(cfg.get("optimized_metric") or "auto")
    sets = list(cfg.data.get("val") or {})
    if name == "auto":
        return f"val/{sets[0]}/acc" if sets else "train/reward"
    prefix, _, rest = name.partition("/")
    named = rest.split("/", 1)[0]
    if prefix in ("val", "val_before") and named not in (*sets, *AGGREGATES):
        raise ConfigError(f"optimized_metric={name} names the validation set {named!r}, which data.val does not "
                          f"have ({', '.join(sets) or 'none'}); name one of them, e.g. "
                          f"optimized_metric=val/{sets[0] if sets else '<set>'}/acc, or train/reward")
    return name


def objective_value(metrics: dict[str, float], name: str) -> float | None:
    """The value of `name` in the run's final metrics; None (with a warning) when the run did not log it."""
    value = metrics.get(name)
    # NaN is no answer either: Hydra's Optuna sweeper turns a NaN into an error that ends the whole study
    if value is None or not math.isfinite(value):
        log.warning("optimized_metric %s is %s in this run's final metrics; returned None to Hydra (a search "
                    "counts the trial as failed)", name, "missing" if value is None else value)
        return None
    return float(value)
