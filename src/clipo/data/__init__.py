"""Prompt data for clipo: the `arith` generator, verl parquet files, Hugging Face datasets.

Every source yields records (plain dicts) of one schema::

    {"messages": [{"role": str, "content": str}, ...], "ground_truth": str,
     "data_source": str, "index": int, ...every other column of the data, by its name}

A record made from a plain-text prompt also has `prompt` (that text); reward functions then get
TRL's plain-text convention (`clipo.rl.reward_inputs`).

The chat template is applied later by the rollout code, with the tokenizer.
"""

from __future__ import annotations

from clipo.data.arith import ArithDataset, generate_problem
from clipo.data.common import bench_dir
from clipo.data.datamodule import PromptDataModule, ResumableBatchSampler
from clipo.data.hub import load_hub
from clipo.data.parquet import load_parquet
from clipo.data.sources import DATA_SOURCES, build_dataset

__all__ = [
    "DATA_SOURCES",
    "ArithDataset",
    "PromptDataModule",
    "ResumableBatchSampler",
    "bench_dir",
    "build_dataset",
    "generate_problem",
    "load_hub",
    "load_parquet",
]
