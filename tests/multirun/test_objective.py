"""`optimized_metric`: the final metric a run returns to Hydra."""

from __future__ import annotations

import pytest

from clipo.config import ConfigError
from clipo.multirun.objective import objective_name, objective_value
from tests.conftest import TINY_OVERRIDES, compose_config


def test_auto_is_the_first_validation_sets_accuracy_or_the_train_reward_without_one():
    assert objective_name(compose_config(TINY_OVERRIDES)) == "val/arith/acc"  # data.val: arith, arith_p1
    assert objective_name(compose_config(["model=tiny", "data.val=null"])) == "train/reward"


def test_a_named_metric_must_be_one_a_run_can_have():
    named = compose_config([*TINY_OVERRIDES, "optimized_metric=val/arith_p1/acc"])
    assert objective_name(named) == "val/arith_p1/acc"
    for ok in ("val/avg/acc", "val_before/arith/acc", "train/acc"):
        assert objective_name(compose_config([*TINY_OVERRIDES, f"optimized_metric={ok}"])) == ok
    with pytest.raises(ConfigError, match=r"names the validation set 'gsm8k', which data.val does not have "
                                          r"\(arith, arith_p1\).*optimized_metric=val/arith/acc"):
        objective_name(compose_config([*TINY_OVERRIDES, "optimized_metric=val/gsm8k/acc"]))


def test_the_value_is_the_runs_final_metric_and_none_when_it_has_no_finite_one(caplog):
    assert objective_value({"val/arith/acc": 0.25, "train/reward": 0.5}, "val/arith/acc") == 0.25
    # None, not NaN: Hydra's Optuna sweeper turns a NaN into an error that ends the whole study
    assert objective_value({"val/arith/acc": float("nan")}, "val/arith/acc") is None
    assert objective_value({}, "val/arith/acc") is None
    assert "optimized_metric val/arith/acc is missing" in caplog.text
