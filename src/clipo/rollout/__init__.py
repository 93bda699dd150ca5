"""Rollouts: the batch an engine returns (`batch`), the engines (`hf_engine`), and the training
forward over a batch (`forward`)."""

from clipo.rollout.batch import (
    RolloutBatch,
    concat_rollouts,
    hidden_mask_from_response,
    pad_time,
    response_mask_from_ids,
)
from clipo.rollout.forward import ForwardOutput, forward_responses
from clipo.rollout.hf_engine import capture_predicting_states, generate_rollouts, hidden_layer_module

__all__ = [
    "ForwardOutput",
    "RolloutBatch",
    "capture_predicting_states",
    "concat_rollouts",
    "forward_responses",
    "generate_rollouts",
    "hidden_layer_module",
    "hidden_mask_from_response",
    "pad_time",
    "response_mask_from_ids",
]
