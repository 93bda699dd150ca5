"""Checkpoints are verified before they are loaded: a damaged file is named, never trained on.

- A `.ckpt` file, and each `.pt` file of a DeepSpeed checkpoint folder or FSDP's `meta.pt`, is the zip
  archive `torch.save` writes, which stores a CRC-32 of every entry: `zipfile.testzip` reads them all.
  (A flipped bit inside a weight leaves a valid archive that torch loads without a word.)
- Files without checksums of their own (FSDP's `.distcp` shards, an exported `model.safetensors`) get
  a `checksums.json` beside them when they are written (`write_checksums`): size and CRC-32 of each.
  A folder whose manifest is missing is checked for what its format allows (a safetensors header must
  describe exactly the bytes that follow it, which finds a truncated file).

Reading a checkpoint once costs about a second per GB; `resume.verify=false` skips it on resume.
"""

from __future__ import annotations

import json
import struct
import zipfile
import zlib
from pathlib import Path

CHECKSUMS = "checksums.json"
_CHUNK = 16 * 2**20
# files of a checkpoint folder that have no checksum of their own
UNCHECKED_SUFFIXES = (".distcp", ".safetensors", ".bin")


def crc32(path: Path) -> int:
    value = 0
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK):
            value = zlib.crc32(chunk, value)
    return value


def write_checksums(folder: Path) -> None:
    """`<folder>/checksums.json`: size and CRC-32 of each of its files without a checksum of their own."""
    folder = Path(folder)
    entries = {str(p.relative_to(folder)): {"bytes": p.stat().st_size, "crc32": crc32(p)}
               for p in sorted(folder.rglob("*")) if p.is_file() and p.suffix in UNCHECKED_SUFFIXES}
    tmp = folder / f".{CHECKSUMS}.tmp"
    tmp.write_text(json.dumps(entries, indent=1))
    tmp.replace(folder / CHECKSUMS)


def zip_problem(path: Path) -> str | None:
    """Why the zip archive at `path` is damaged (an entry whose CRC-32 does not match, a cut archive), or None."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error, ValueError) as error:
        return (f"not a whole zip archive as torch.save writes: cut short by a copy or a save that did not finish, "
                f"or another format ({type(error).__name__}: {error})")
    return f"its entry {bad} does not match its CRC-32: its bytes changed after they were written" if bad else None


def safetensors_problem(path: Path) -> str | None:
    """Why `path` is not a whole safetensors file (its header must describe exactly the bytes after it), or None."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as file:
            (length,) = struct.unpack("<Q", file.read(8))
            header = json.loads(file.read(length)) if 0 < length <= size - 8 else None
        ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    except (struct.error, ValueError, OSError, AttributeError, KeyError, TypeError, IndexError) as error:
        return f"no readable safetensors header ({size} bytes; {type(error).__name__})"
    expected = 8 + length + max(ends, default=0)
    if expected != size:
        return f"it holds {size} bytes where its safetensors header describes {expected} (cut short, or grown)"
    return None


def manifest_problem(folder: Path) -> str | None:
    """A file of `folder` whose size or CRC-32 differs from its `checksums.json`, or None (none, or no manifest)."""
    manifest = folder / CHECKSUMS
    if not manifest.is_file():
        return None
    for name, expected in json.loads(manifest.read_text()).items():
        path = folder / name
        if not path.is_file():
            return f"{name}: missing (listed in {CHECKSUMS})"
        if path.stat().st_size != expected["bytes"] or crc32(path) != expected["crc32"]:
            return f"{name}: its size or CRC-32 differs from the one {CHECKSUMS} recorded when it was written"
    return None


def checkpoint_problem(path: Path) -> str | None:
    """Why the checkpoint file or folder at `path` is damaged, or None: every zip's CRCs, the folder's manifest,
    each safetensors file's header. A problem inside a folder starts with the file's name in it."""
    path = Path(path)
    if path.is_file():
        return safetensors_problem(path) if path.suffix == ".safetensors" else zip_problem(path)
    for file in sorted(path.rglob("*.pt")):
        if file.is_file() and (problem := zip_problem(file)):
            return f"{file.relative_to(path)}: {problem}"
    if problem := manifest_problem(path):
        return problem
    for file in sorted(path.rglob("*.safetensors")):
        if problem := safetensors_problem(file):
            return f"{file.relative_to(path)}: {problem}"
    return None
