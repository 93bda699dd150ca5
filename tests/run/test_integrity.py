"""Checkpoints are verified before they load: a zip's CRCs, a folder's checksums.json, a safetensors header."""

from __future__ import annotations

import json

import torch

from clipo.models import build_tiny
from clipo.run.integrity import CHECKSUMS, checkpoint_problem, write_checksums
from tests.run.test_resume import flip_bytes


def test_a_torch_checkpoint_is_checked_by_its_zip_crcs(tmp_path):
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"w": torch.arange(4096.0)}}, path)
    assert checkpoint_problem(path) is None
    flip_bytes(path, count=8)
    assert checkpoint_problem(path).startswith("its entry last/data/0 does not match its CRC-32")
    torch.save({"state_dict": {"w": torch.arange(4096.0)}}, path)
    path.write_bytes(path.read_bytes()[:-2000])  # cut short, as a copy that did not finish
    assert checkpoint_problem(path).startswith("not a whole zip archive as torch.save writes")


def _export(folder):
    model, tokenizer = build_tiny(seed=0)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder / "model.safetensors"


def test_an_exported_policy_is_checked_by_its_checksums_and_its_safetensors_header(tmp_path):
    weights = _export(tmp_path / "policy")
    write_checksums(tmp_path / "policy")
    assert set(json.loads((tmp_path / "policy" / CHECKSUMS).read_text())) == {"model.safetensors"}
    assert checkpoint_problem(tmp_path / "policy") is None
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF  # a flipped bit in a weight: the header still describes the file
    weights.write_bytes(bytes(data))
    assert checkpoint_problem(tmp_path / "policy") == ("model.safetensors: its size or CRC-32 differs from the one "
                                                       "checksums.json recorded when it was written")
    # without a manifest (a folder from elsewhere), a cut file is still found by its header
    (tmp_path / "policy" / CHECKSUMS).unlink()
    assert checkpoint_problem(tmp_path / "policy") is None  # a flipped bit alone is invisible there
    weights.write_bytes(bytes(data[:-500]))
    problem = checkpoint_problem(tmp_path / "policy")
    assert problem.startswith(f"model.safetensors: it holds {len(data) - 500} bytes where its safetensors header "
                              f"describes {len(data)}"), problem
    weights.write_bytes(b"\x00" * 4)
    assert checkpoint_problem(weights).startswith("no readable safetensors header")
