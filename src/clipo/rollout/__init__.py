"""Rollouts: the batch an engine returns (`batch`), how it samples (`sampling`), the engines
(`hf_engine`: `HFEngine`, registered as `rollout.engine=hf`; `vllm_engine`: `VLLMEngine`, as
`rollout.engine=vllm`), the training forward over a batch (`forward`), and what it supplies for an
engine without hidden states (`completion`)."""

from clipo.rollout.batch import (
    RolloutBatch,
    concat_rollouts,
    hidden_mask_from_response,
    pad_time,
    response_mask_from_ids,
)
from clipo.rollout.forward import ForwardOutput, forward_responses
from clipo.rollout.hf_engine import (
    HFEngine,
    capture_predicting_states,
    generate_rollouts,
    generation_config,
    hidden_layer_module,
)
from clipo.rollout.sampling import Sampling
from clipo.rollout.vllm_engine import VLLMEngine
from clipo.rollout.vllm_server_engine import VLLMServerEngine

__all__ = [
    "ForwardOutput",
    "HFEngine",
    "RolloutBatch",
    "Sampling",
    "VLLMEngine",
    "VLLMServerEngine",
    "capture_predicting_states",
    "concat_rollouts",
    "forward_responses",
    "generate_rollouts",
    "generation_config",
    "hidden_layer_module",
    "hidden_mask_from_response",
    "pad_time",
    "response_mask_from_ids",
]
