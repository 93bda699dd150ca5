"""Reading an offline W&B run's records (`<run>/wandb/offline-run-*/run-<id>.wandb`) for the tests.

wandb 0.31 writes them from its Go core and ships no Python reader; the file is W&B's header (":W&B",
magic, version: 7 bytes) and then LevelDB's log format: 32 KiB blocks of chunks, each with a 7-byte
header (CRC, length, type: 1 full, 2 first, 3 middle, 4 last), a block's last < 7 bytes zero padding.
Each record is one `wandb_internal_pb2.Record`, W&B's own protobuf.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

BLOCK, HEADER = 32768, 7


def records(path: Path) -> Iterator:
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, parts = HEADER, []
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:  # padding at a block's end
            pos += BLOCK - pos % BLOCK
            continue
        length, kind = struct.unpack_from("<HB", data, pos + 4)
        parts.append(data[pos + HEADER:pos + HEADER + length])
        pos += HEADER + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(parts))
            parts = []
            yield record


def history(path: Path) -> list[dict]:
    """The run's history rows (what `log` wrote), values decoded; nested keys joined with '/'."""
    return [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            for record in records(path) if record.WhichOneof("record_type") == "history"]


def run_id(path: Path) -> str:
    return next(r.run.run_id for r in records(path) if r.WhichOneof("record_type") == "run")
