"""How tables show failed runs (which runs failed: ``bench/core/outcome.py``; a failed row,
or an ok row whose main score is NaN or infinite).

Tables never leave a failed run out: a cell whose runs all failed reads ``failed §k``, a
cell with some failed seeds shows the statistic of the ok ones and ``k of n failed §k``,
and note ``§k`` below the table gives the seeds and their errors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pandas as pd

from bench.core.outcome import FAILED, NON_FINITE, failure
from bench.core.records import ResultRecord, latest_by_cell

__all__ = ["FAILED", "MARK", "NON_FINITE", "Note", "current", "failure", "failures_frame", "length_key", "notes",
           "with_notes_column"]

MARK = "§"
ERROR_CHARS = 200  # per error in a note: the first line of a traceback, not the whole of it
COLUMNS = ["method", "task", "backbone", "prefix_length", "seed", "main_metric", "kind", "error"]


def current(records: list[ResultRecord], usable: list[ResultRecord]) -> list[ResultRecord]:
    """The failed rows among each cell's newest row, less those a newer experiment of their
    table cell superseded: ``usable`` are the rows the tables average (newest experiments
    only), and a failure of options or code since changed is stale like the ok rows left
    out. Matched on the config less the seed (a failed row has no data fingerprint)."""
    def config_key(r: ResultRecord) -> str:
        return json.dumps({k: v for k, v in r.config.items() if k != "seed"}, sort_keys=True, default=str)

    def table_cell(r: ResultRecord) -> tuple:
        return r.method, r.task, r.backbone, r.prefix_length

    order = {id(r): i for i, r in enumerate(records)}  # file order: later is newer
    newest = {table_cell(r): (order[id(r)], config_key(r)) for r in usable}  # usable come in file order
    kept = []
    for r in latest_by_cell(records).values():
        if failure(r) is None:
            continue
        position, config = newest.get(table_cell(r), (-1, config_key(r)))
        if order[id(r)] > position or config_key(r) == config:
            kept.append(r)
    return kept


def failures_frame(records: list[ResultRecord]) -> pd.DataFrame:
    """One row per failed run among ``records`` (already the latest record of each cell)."""
    rows = []
    for r in records:
        bad = failure(r)
        if bad:
            rows.append({"method": r.method, "task": r.task, "backbone": r.backbone,
                         "prefix_length": r.prefix_length, "seed": r.seed, "main_metric": r.main_metric,
                         "kind": bad[0], "error": bad[1]})
    return pd.DataFrame(rows, columns=COLUMNS)


def length_key(value: object) -> int | None:
    """A prefix length as a dict key: None for no prefix (None or NaN in a frame)."""
    return None if value is None or pd.isna(value) else int(value)


@dataclass(frozen=True)
class Note:
    """The failed runs of one (method, prefix length) cell of one table."""

    number: int
    method: str
    prefix_length: int | None
    failed: int
    runs: int  # ok + failed
    errors: str  # "seed 7: RuntimeError: boom; seeds 1, 2: ..."

    @property
    def mark(self) -> str:
        return f"{MARK}{self.number}"

    @property
    def text(self) -> str:
        where = "no prefix" if self.prefix_length is None else f"P={self.prefix_length}"
        return f"{self.mark} {self.method}, {where}: {self.failed} of {self.runs} run(s) failed: {self.errors}"

    def cell(self, shown: str) -> str:
        """The table cell: ``shown`` (the ok runs' statistic) with the failure marked."""
        if self.failed == self.runs or not shown:
            return f"{FAILED} {self.mark}"
        return f"{shown}; {self.failed} of {self.runs} failed {self.mark}"


def _errors(g: pd.DataFrame) -> str:
    """Seeds grouped by error text, in seed order."""
    by_error: dict[str, list[str]] = {}
    for _, row in g.sort_values("seed", kind="stable").iterrows():
        text = " ".join(str(row["error"]).split())
        text = text if len(text) <= ERROR_CHARS else text[:ERROR_CHARS - 1] + "…"
        by_error.setdefault(text, []).append(str(row["seed"]))
    return "; ".join(f"seed{'s' if len(s) > 1 else ''} {', '.join(s)}: {e}" for e, s in by_error.items())


def notes(ok: pd.DataFrame, failed: pd.DataFrame) -> dict[tuple[str, int | None], Note]:
    """Notes for one table's cells: ``ok`` and ``failed`` are its rows of ``records_frame``
    and ``failures_frame``. Numbered by method, then prefix length (no prefix last)."""
    if failed.empty:
        return {}
    keys = sorted({(str(m), length_key(p)) for m, p in zip(failed["method"], failed["prefix_length"], strict=True)},
                  key=lambda k: (k[0], k[1] is None, k[1] or 0))
    ok_keys = [(str(m), length_key(p)) for m, p in zip(ok["method"], ok["prefix_length"], strict=True)]
    fail_keys = [(str(m), length_key(p)) for m, p in zip(failed["method"], failed["prefix_length"], strict=True)]
    out = {}
    for number, key in enumerate(keys, 1):
        g = failed[[k == key for k in fail_keys]]
        out[key] = Note(number, key[0], key[1], len(g), len(g) + ok_keys.count(key), _errors(g))
    return out


def with_notes_column(board: pd.DataFrame, notes_by_cell: dict[tuple[str, int | None], Note]) -> pd.DataFrame:
    """A leaderboard for CSV: its cells plus a ``failures`` column holding each row's notes,
    since a CSV has no place below the table for them."""
    by_method: dict[str, list[str]] = {}
    for (method, _), note in sorted(notes_by_cell.items(), key=lambda kv: kv[1].number):
        by_method.setdefault(method, []).append(note.text)
    return board.assign(failures=[" | ".join(by_method.get(m, [])) for m in board["method"]])
