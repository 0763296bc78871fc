"""How each method's learning rate was chosen, and whether its runs converged: one row per
(task, backbone, method) whose final rows carry a search (bench/run/search.py). A paper's
reader needs this beside the scores: a method compared at a rate from the edge of its grid,
or stopped by the step cap while still improving, is compared at less than its best."""

from __future__ import annotations

import math
import statistics
from typing import Any

import pandas as pd

from bench.core.records import ResultRecord, latest_by_cell

SEARCH_TITLE = "How each learning rate was chosen (held-out slice of the training split), and convergence"
SEARCH_NOTE = ("Trials ran at the search's prefix length and seed; every final run of the method used the "
               "chosen rate. edge: the choice is the grid's top or bottom, so the best rate may lie beyond it; "
               "\"by\" gives its margin over the next rate, to weigh against the held-out score's noise; "
               "a rate marked \"(widened)\" is a trial the suite's widen rule added beyond an edge choice. plateaued: final runs "
               "stopped by early stopping, the others reached the step cap still improving.")
COLUMNS = ["task", "backbone", "method", "searched at", "rates", "held-out score per rate", "chosen lr", "edge",
           "search cost", "plateaued", "best step (median) / cap"]


def _number(value: Any) -> float | None:
    """A finite number from an untrusted record, else None."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _rate(value: Any) -> str:
    x = _number(value)
    return "?" if x is None else f"{x:g}"


def _score(value: Any) -> str:
    x = _number(value)
    return "failed" if x is None else f"{x:.4f}"


def _duration(seconds: Any) -> str:
    s = _number(seconds)
    if s is None:
        return ""
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.0f} min"


def _where(prefix_length: Any, seed: Any) -> str:
    """Where a search's trials ran ("P=20, seed 0"), from untrusted fields."""
    where = [f"P={prefix_length}"] if _number(prefix_length) is not None else []
    if _number(seed) is not None:
        where.append(f"seed {int(seed)}")
    return ", ".join(where)


def _edge(edge: Any, grid: list, scores: dict) -> str:
    """"bottom (by 0.0075)": an edge choice and its margin over the next rate of its grid, the
    number to weigh against the held-out score's noise (README: the grid-edge rule)."""
    if edge not in ("top", "bottom") or len(grid) < 2:
        return ""
    chosen, neighbour = (grid[0], grid[1]) if edge == "bottom" else (grid[-1], grid[-2])
    a, b = _number(scores.get(str(chosen))), _number(scores.get(str(neighbour)))
    if a is None:
        return edge
    return f"{edge} (next rate failed)" if b is None else f"{edge} (by {abs(a - b):.4f})"


def _row(task: str, backbone: str, method: str, rows: list[ResultRecord]) -> dict[str, str] | None:
    sel = rows[-1].search if isinstance(rows[-1].search, dict) else {}
    grid = sel.get("grid", {}).get("lr") if isinstance(sel.get("grid"), dict) else None
    if not isinstance(grid, list) or not grid:
        return None
    scores = sel.get("scores") if isinstance(sel.get("scores"), dict) else {}
    chosen = sel.get("chosen") if isinstance(sel.get("chosen"), dict) else {}
    widened = sel.get("widened") if isinstance(sel.get("widened"), dict) else {}
    added = widened.get("added") if isinstance(widened.get("added"), list) else []
    stopped = [r.plateaued for r in rows if r.plateaued is not None]
    best = [r.best_step for r in rows if _number(r.best_step) is not None]
    caps = {r.config.get("train", {}).get("train_steps") for r in rows
            if isinstance(r.config, dict) and isinstance(r.config.get("train"), dict)}
    cap = next(iter(caps)) if len(caps) == 1 else None
    return {"task": task, "backbone": backbone, "method": method, "searched at": _where(sel.get("prefix_length"), sel.get("seed")),
            "rates": " · ".join(_rate(x) + (" (widened)" if x in added else "") for x in grid),
            "held-out score per rate": " · ".join(_score(scores.get(str(x))) for x in grid),
            "chosen lr": _rate(chosen.get("lr")) if chosen else "none",
            "edge": _edge(sel.get("edge"), grid, scores),
            "search cost": _duration(sel.get("cost_s")),
            "plateaued": f"{sum(bool(p) for p in stopped)}/{len(stopped)}" if stopped else "no early stopping",
            "best step (median) / cap": (f"{statistics.median(best):g} / {_rate(cap)}" if best else "")}


def search_table(rows: list[ResultRecord]) -> pd.DataFrame:
    """``rows``: the final rows a leaderboard aggregates (``views.newest_experiments``)."""
    groups: dict[tuple[str, str, str], list[ResultRecord]] = {}
    for r in rows:
        if isinstance(r.search, dict) and r.search:
            groups.setdefault((r.task, r.backbone, r.method), []).append(r)
    out = [row for key, g in groups.items() if (row := _row(*key, g)) is not None]
    return pd.DataFrame(out, columns=COLUMNS).sort_values(["task", "backbone", "method"], ignore_index=True)


PROGRESS_TITLE = "Searches still running: the trials finished so far"
PROGRESS_NOTE = ("Learning-rate searches whose method has no final run yet: each finished trial's held-out score "
                 "(a slice of the training split, never the evaluation split), and how many trials stopped by "
                 "early stopping. Not results: the method's final runs start at the best rate of its grid once "
                 "every trial has finished.")
PROGRESS_COLUMNS = ["task", "backbone", "method", "trials at", "held-out score per rate so far", "plateaued",
                    "trial time"]


def _trial_row(task: str, backbone: str, method: str, rows: list[ResultRecord]) -> dict[str, str]:
    rows = sorted(rows, key=lambda r: _number(r.lr) if _number(r.lr) is not None else math.inf)
    scores = [f"{_rate(r.lr)}: {_score(r.holdout_score if r.status == 'ok' else None)}" for r in rows]
    stopped = [r.plateaued for r in rows if r.plateaued is not None]
    seconds = [s for r in rows for s in (_number(r.train_seconds), _number(r.eval_seconds)) if s is not None]
    return {"task": task, "backbone": backbone, "method": method, "trials at": _where(rows[0].prefix_length, rows[0].seed),
            "held-out score per rate so far": " · ".join(scores),
            "plateaued": f"{sum(bool(p) for p in stopped)}/{len(stopped)}" if stopped else "",
            "trial time": _duration(sum(seconds)) if seconds else ""}


def trials_table(records: list[ResultRecord]) -> pd.DataFrame:
    """The search trials (``role`` "trial") of methods with no searched final row yet, newest row
    per trial cell: what a long search has found so far, before any table has a number."""
    finals = {(r.task, r.backbone, r.method) for r in records
              if r.role != "trial" and isinstance(r.search, dict) and r.search}
    groups: dict[tuple[str, str, str], list[ResultRecord]] = {}
    for r in latest_by_cell([r for r in records if r.role == "trial"]).values():
        key = (r.task, r.backbone, r.method)
        if key not in finals:
            groups.setdefault(key, []).append(r)
    out = [_trial_row(*key, g) for key, g in groups.items()]
    return pd.DataFrame(out, columns=PROGRESS_COLUMNS).sort_values(["task", "backbone", "method"], ignore_index=True)
