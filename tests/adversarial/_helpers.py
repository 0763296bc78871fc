"""Helpers shared by the adversarial tests: folder snapshots, record rows, suite files."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from _records_fixture import record

from bench.core.records import RECORDS_FILE

# A one-cell suite on the random tiny LLaMA; {task} is filled in.
TINY_SUITE = """
[suites.s]
methods = ["lora"]
tasks = ["{task}"]
backbones = ["tiny-llama"]
prefix_lengths = [2]
seeds = [0]
train = {{ train_steps = 2, batch_size = 2, eval_limit = 4, max_length = 32 }}
"""


def tree(root: Path) -> set[str]:
    """Every path under ``root`` (files, folders, links), relative to it."""
    out = set()
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            out.add(os.path.relpath(os.path.join(folder, name), root))
    return out


def row(**fields: Any) -> dict[str, Any]:
    """A valid record row as a dict (a LoRA row of the render fixture), ``fields`` replaced."""
    return {**dataclasses.asdict(record("lora", None, 0)), **fields}


def write_rows(folder: Path, rows: list[Any]) -> Path:
    """records.jsonl in ``folder``: dicts as JSON lines, bytes and str lines as they are."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / RECORDS_FILE
    with open(path, "wb") as f:
        for r in rows:
            if isinstance(r, bytes):
                f.write(r.rstrip(b"\n") + b"\n")
            elif isinstance(r, str):
                f.write(r.encode("utf-8", "surrogatepass").rstrip(b"\n") + b"\n")
            else:
                f.write(json.dumps(r, allow_nan=True).encode() + b"\n")
    return path
