"""Which planned cells are finished, and which recorded rows are stale.

A cell is finished when its newest row is ``ok`` and was computed on the data there is now.
A row is *stale* when it stands at a planned, unfinished cell's matrix point (method, task,
backbone, prefix length, seed, and whether it is a search trial) without being a current
result for it:

- its id differs: the cell's options, or the code identity of its method, task or the
  harness (``bench.core.identity``), changed since it ran;
- or it is the cell's own row, but its ``data_fingerprint`` differs from the data just read.

Stale rows never count as finished: ``run`` re-runs their cells and says how many it found
and why (the newest row per cell; older ones were superseded by it). Rows of cells already
re-run are not reported again.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bench.core.identity import identity_changes
from bench.core.records import ResultRecord, latest_by_cell
from bench.run.matrix import TRIAL, Cell

POINT = ("method", "task", "backbone", "prefix_length", "seed", "role")


def point(x: Cell | ResultRecord) -> tuple[Any, ...]:
    """Where a row stands in the matrix; a search trial's rate is part of it (a grid moved by
    a step drops a rate: its trial is not re-run, the new rate is a new trial)."""
    where = tuple(getattr(x, k) for k in POINT)
    if x.role != TRIAL:
        return where
    return (*where, x.train.get("lr") if isinstance(x, Cell) else x.lr)


@dataclass
class Plan:
    todo: list[Cell]
    finished: int
    stale: Counter[str] = field(default_factory=Counter)  # why -> stale rows, one per cell re-run

    def describe(self) -> str:
        reasons = "; ".join(f"{why}: {n}" for why, n in sorted(self.stale.items()))
        return (f"{sum(self.stale.values())} stale row(s) (same matrix point, different identity) "
                f"will be re-run ({reasons})")


def _why(row: ResultRecord, cell: Cell) -> str:
    """The difference between a stale row and the cell now at its point, in words."""
    recorded = {k: v for k, v in row.config.items() if k != "identity"}
    planned = {k: v for k, v in cell.resolved().items() if k != "identity"}
    if recorded != planned:
        return "options changed"
    return "code changed: " + ", ".join(identity_changes(row.config.get("identity", {}), cell.identity))


def plan(cells: list[Cell], records: list[ResultRecord], data_fingerprints: Mapping[str, str],
         retry_failed: bool = False) -> Plan:
    """The cells to run and the stale rows found. ``data_fingerprints``: cell id -> the
    fingerprint of the data it reads, as just read (a cell missing from it is not checked)."""
    latest = latest_by_cell(records)
    ok = {cid for cid, r in latest.items() if r.status == "ok"}
    ids = {c.id for c in cells}
    # per matrix point, the newest ok row of a cell not planned now: what a run that
    # trusted matrix points would have reused (older ones were superseded by it)
    newest_other = {point(r): r for r in records if r.status == "ok" and r.cell_id not in ids
                    and latest[r.cell_id] is r}
    finished: set[str] = set()
    stale: Counter[str] = Counter()
    for cell in cells:
        now = data_fingerprints.get(cell.id)
        if cell.id in ok:
            if now is None or latest[cell.id].data_fingerprint == now:
                finished.add(cell.id)
            else:
                stale["data changed"] += 1
        elif point(cell) in newest_other:
            stale[_why(newest_other[point(cell)], cell)] += 1
    if retry_failed:  # only cells whose last row failed (and nothing else, stale or new)
        failed = {r.cell_id for r in records if r.status == "failed"} - ok
        todo = [c for c in cells if c.id in failed]
    else:
        todo = [c for c in cells if c.id not in finished]
    return Plan(todo, len(finished), stale)
