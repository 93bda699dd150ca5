"""Dispatch of data sources by name: `build_dataset("arith", size=100)`."""

from __future__ import annotations

import inspect
from typing import Any

from clipo.data.arith import ArithDataset
from clipo.data.hub import load_hub
from clipo.data.parquet import load_parquet
from clipo.registry import Registry

DATA_SOURCES = Registry("data source")
DATA_SOURCES.register("arith")(ArithDataset)
DATA_SOURCES.register("parquet")(load_parquet)
DATA_SOURCES.register("hub")(load_hub)


def build_dataset(source: str, **kwargs: Any) -> Any:
    """The records of data source `source` ("arith", "parquet", "hub") built with `kwargs`.

    Returns:
        a list of records, or a torch `Dataset` of them (`arith`).
    """
    if source not in DATA_SOURCES:
        raise ValueError(f"unknown data source {source!r}; choose one of: {', '.join(DATA_SOURCES.names())}")
    factory = DATA_SOURCES.get(source)
    signature = inspect.signature(factory)
    try:
        signature.bind(**kwargs)
    except TypeError as error:
        raise TypeError(f"data source {source!r}: {error}; it takes {signature}") from None
    return factory(**kwargs)

