"""A task's data as cells use it: each split read once per process, its fingerprint, and
the subsets a cell trains and evaluates on."""

from __future__ import annotations

import torch

from tasks import TASKS, DataSettings
from tasks.base import Example, Split

_SPLITS: dict[tuple, Split] = {}


def load_split(task_name: str, split: str, data: DataSettings) -> Split:
    key = (task_name, split, data)
    if key not in _SPLITS:
        _SPLITS[key] = TASKS.get(task_name).load(split, data)
    return _SPLITS[key]


def data_fingerprint(task_name: str, data: DataSettings) -> str:
    """The task's data as a row records it ("train/eval" fingerprints); reads it if needed."""
    task = TASKS.get(task_name)
    return (f"{load_split(task_name, task.train_split, data).fingerprint}/"
            f"{load_split(task_name, task.eval_split, data).fingerprint}")


def subset(examples: list[Example], limit: int | None, seed: int | None) -> list[Example]:
    """At most ``limit`` examples: a seeded random draw, or the first ones without a seed."""
    if limit is None or limit >= len(examples):
        return examples
    if seed is None:
        return examples[:limit]
    g = torch.Generator().manual_seed(seed)
    return [examples[i] for i in torch.randperm(len(examples), generator=g)[:limit].tolist()]
