"""Dispatch of data sources by name."""

from __future__ import annotations

import pytest

from clipo.data import DATA_SOURCES, ArithDataset, build_dataset


def test_sources_are_registered():
    assert DATA_SOURCES.names() == ["arith", "hub", "parquet"]


def test_build_arith():
    dataset = build_dataset("arith", size=4, levels=[2], seed=9)
    assert isinstance(dataset, ArithDataset) and len(dataset) == 4
    assert dataset[0] == ArithDataset(size=4, levels=[2], seed=9)[0]


def test_unknown_source_lists_the_choices():
    with pytest.raises(ValueError, match="'gsm'.*arith, hub, parquet"):
        build_dataset("gsm")


def test_bad_argument_shows_the_signature():
    with pytest.raises(TypeError, match="'arith'.*num_problems.*size"):
        build_dataset("arith", num_problems=3)
