"""A task's data as cells use it: each split read once per process, its fingerprint, and
the subsets a cell trains, selects and evaluates on.

The held-out slice (``holdout`` > 0) comes from the training split, drawn with
``HOLDOUT_SEED`` whatever the cell's seed: every seed of a group and every trial of a search
is selected and early-stopped on the same examples. The cell trains on the rest, never on them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import torch

from tasks import DataSettings, task_for
from tasks.base import Example, Split

_SPLITS: dict[tuple, Split] = {}
# Fixed, and not any cell's seed: the held-out slice must be the same for every cell of a group.
HOLDOUT_SEED = 17_2026
# A search trial's fingerprint in place of the evaluation split's: it never reads that split,
# so the trial's row stands whatever happens to it.
NOT_READ = "-"


def load_split(task_name: str, split: str, data: DataSettings, task_args: Mapping[str, Any] | None = None) -> Split:
    """``split`` of task ``task_name`` (with a cell's ``task_args``), read once per process."""
    key = (task_name, json.dumps(dict(task_args or {}), sort_keys=True), split, data)
    if key not in _SPLITS:
        _SPLITS[key] = task_for(task_name, task_args).load(split, data)
    return _SPLITS[key]


def data_fingerprint(task_name: str, data: DataSettings, *, eval_split: bool = True,
                     task_args: Mapping[str, Any] | None = None) -> str:
    """The task's data as a row records it ("train/eval" fingerprints); reads it if needed.
    ``eval_split`` False: a cell that never reads the evaluation split (a search trial),
    whose fingerprint names only the training split's ("train/-")."""
    task = task_for(task_name, task_args)
    train = load_split(task_name, task.train_split, data, task_args).fingerprint
    evaluated = load_split(task_name, task.eval_split, data, task_args).fingerprint if eval_split else NOT_READ
    return f"{train}/{evaluated}"


def subset(examples: list[Example], limit: int | None, seed: int | None) -> list[Example]:
    """At most ``limit`` examples: a seeded random draw, or the first ones without a seed."""
    if limit is None or limit >= len(examples):
        return examples
    if seed is None:
        return examples[:limit]
    g = torch.Generator().manual_seed(seed)
    return [examples[i] for i in torch.randperm(len(examples), generator=g)[:limit].tolist()]


def split_holdout(examples: list[Example], fraction: float, limit: int | None,
                  seed: int) -> tuple[list[Example], list[Example]]:
    """(training examples, held-out examples) of a training split. Without a held-out slice:
    ``subset(examples, limit, seed)`` and none. With one: of the ``limit`` examples a cell
    would use (all without a limit), ``fraction`` (at least one, and at least one left to
    train on) is held out, drawn from the whole split with ``HOLDOUT_SEED``, in a fixed order;
    the cell trains on a seeded draw of the rest. Where rows share references (generation),
    whole inputs are held out (``_split_groups``)."""
    if fraction <= 0:
        return subset(examples, limit, seed), []
    used = len(examples) if limit is None else min(limit, len(examples))
    n_held = min(max(1, round(fraction * used)), used - 1)
    if n_held < 1:
        raise ValueError(f"a held-out slice needs at least 2 training examples, the split has {len(examples)}")
    g = torch.Generator().manual_seed(HOLDOUT_SEED)
    if any(len(e.references) > 1 for e in examples):
        return _split_groups(examples, n_held, used, seed, g)
    order = torch.randperm(len(examples), generator=g).tolist()
    held = sorted(order[:n_held])
    rest = [examples[i] for i in sorted(order[n_held:])]
    return subset(rest, used - n_held, seed), [examples[i] for i in held]


def _split_groups(examples: list[Example], n_held: int, used: int, seed: int,
                  g: torch.Generator) -> tuple[list[Example], list[Example]]:
    """Rows that share an input share its references (E2E: one row per reference, each
    scored against all of its MR's references), so a held-out row whose input also trains
    would be scored against targets the model trained on. Whole inputs are held out: groups
    drawn with ``HOLDOUT_SEED`` until they hold ``n_held`` rows, at least one group left."""
    groups: dict[tuple[str, str | None], list[int]] = {}
    for i, e in enumerate(examples):
        groups.setdefault((e.text_a, e.text_b), []).append(i)
    if len(groups) < 2:
        raise ValueError(f"a held-out slice of whole inputs needs at least 2 distinct inputs, the split has "
                         f"{len(groups)}")
    keys = list(groups)
    held: list[int] = []
    for k in torch.randperm(len(keys), generator=g).tolist()[:len(keys) - 1]:
        if len(held) >= n_held:
            break
        held += groups[keys[k]]
    out = set(held)
    rest = [e for i, e in enumerate(examples) if i not in out]
    return subset(rest, max(1, used - len(held)), seed), [examples[i] for i in sorted(held)]
