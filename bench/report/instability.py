"""Table cells whose number moves by more than its noise: between machines, or between seeds.

*Between machines.* A cell's id pins its code, data, options, threads and kernel mode, not
the machine, so one results folder can hold rows of the same cell from two machines (a
folder merged from a colleague's, a ``reproduce`` on another host). Tables show the newest
row; when another machine's row of that cell differs by more than twice the seeds' standard
deviation of its table cell (any difference when there is no spread to judge by: one seed,
or pinned kernels that should give the same bits), the cell is marked ``≠`` and a note says
by how much and where each number came from.

*Between seeds.* A table cell where some seeds collapsed to one class and others did not
holds two outcomes; its mean describes neither, so it is marked too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from bench.core.outcome import failure
from bench.core.records import ResultRecord
from bench.report.failures import length_key

MARK = "≠"


@dataclass(frozen=True)
class Unstable:
    method: str
    prefix_length: int | None
    text: str


def machine_of(r: ResultRecord) -> str:
    """What tells two machines' rows apart: device, CPU model and the kernels' ISA."""
    k = r.kernels if isinstance(r.kernels, dict) else {}
    parts = [str(r.device or "unknown device"), str(k.get("cpu_model", "")), str(k.get("aten_cpu_capability", ""))]
    return " / ".join(p for p in parts if p)


def _where(method: str, length: int | None) -> str:
    return f"{method}, {'no prefix' if length is None else f'P={length}'}"


def _seed_std(ok: pd.DataFrame, method: str, length: int | None) -> tuple[float, int]:
    lengths = [length_key(p) for p in ok["prefix_length"]]
    sel = ok[(ok["method"] == method) & pd.Series([p == length for p in lengths], index=ok.index, dtype=bool)]
    scores = pd.to_numeric(sel["main_score"], errors="coerce").dropna()
    return (float(scores.std(ddof=1)), len(scores)) if len(scores) >= 2 else (math.nan, len(scores))


def between_machines(records: list[ResultRecord], ok: pd.DataFrame) -> list[Unstable]:
    """``records``: every row of one table (all machines, all times); ``ok``: the rows the
    table aggregates (``records_frame``), whose seeds give the noise."""
    per_cell: dict[str, dict[str, ResultRecord]] = {}
    for r in records:  # file order: a machine's newest row of a cell wins
        if failure(r) is None:
            per_cell.setdefault(r.cell_id, {})[machine_of(r)] = r
    out = []
    for rows in per_cell.values():
        if len(rows) < 2:
            continue
        first = next(iter(rows.values()))
        method, length = str(first.method), length_key(first.prefix_length)
        scores = {m: float(r.main_score) for m, r in rows.items()}
        spread = max(scores.values()) - min(scores.values())
        std, n = _seed_std(ok, method, length)
        noise = 2 * std if n >= 2 else 0.0
        if spread <= noise:
            continue
        shown = "; ".join(f"{s:.4f} on {m}" for m, s in sorted(scores.items(), key=lambda kv: kv[1]))
        judged = (f"more than twice the seeds' std ({std:.4f}, n={n})" if n >= 2
                  else "with no seed spread to judge it by, any difference counts")
        out.append(Unstable(method, length, f"{MARK} {_where(method, length)}, seed {first.seed}: changes between "
                                            f"machines by {spread:.4f} ({shown}): {judged}."))
    return out


def between_seeds(ok: pd.DataFrame) -> list[Unstable]:
    out = []
    keys = sorted({(str(m), length_key(p)) for m, p in zip(ok["method"], ok["prefix_length"], strict=True)},
                  key=lambda k: (k[0], k[1] is None, k[1] or 0))
    for method, length in keys:
        lengths = [length_key(p) for p in ok["prefix_length"]]
        sel = ok[(ok["method"] == method) & pd.Series([p == length for p in lengths], index=ok.index, dtype=bool)]
        collapsed = int(sel["collapsed"].astype(bool).sum())
        if 0 < collapsed < len(sel):
            out.append(Unstable(method, length, f"{MARK} {_where(method, length)}: {collapsed} of {len(sel)} seeds "
                                                "collapsed to one class and the others did not: the mean describes "
                                                "neither outcome."))
    return out


def find(records: list[ResultRecord], ok: pd.DataFrame) -> list[Unstable]:
    return between_machines(records, ok) + between_seeds(ok)


def mark_board(board: pd.DataFrame, unstable: list[Unstable]) -> pd.DataFrame:
    """``board`` (a leaderboard frame) with ``MARK`` after each unstable cell's value."""
    if not unstable or board.empty:
        return board
    board = board.copy()
    for u in unstable:
        column = "no prefix" if u.prefix_length is None else f"P={u.prefix_length}"
        if column not in board.columns:
            continue
        rows = board["method"] == u.method
        board.loc[rows, column] = [v if not v or v.endswith(MARK) else f"{v} {MARK}" for v in board.loc[rows, column]]
    return board
