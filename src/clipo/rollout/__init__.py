"""Rollouts: the batch an engine returns (`batch`), how it samples (`sampling`), the engines
(`hf_engine`: `HFEngine`, registered as `rollout.engine=hf`), and the training forward over a
batch (`forward`)."""

from clipo.rollout.batch import RolloutBatch, concat_rollouts, pad_time, response_mask_from_ids
from clipo.rollout.forward import ForwardOutput, forward_responses
from clipo.rollout.hf_engine import (
    HFEngine,
    capture_predicting_states,
    generate_rollouts,
    generation_config,
    hidden_layer_module,
)
from clipo.rollout.sampling import Sampling

__all__ = [
    "ForwardOutput",
    "HFEngine",
    "RolloutBatch",
    "Sampling",
    "capture_predicting_states",
    "concat_rollouts",
    "forward_responses",
    "generate_rollouts",
    "generation_config",
    "hidden_layer_module",
    "pad_time",
    "response_mask_from_ids",
]
