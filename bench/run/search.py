"""Equal-budget learning-rate search: a suite's ``search`` table checked, and each final
cell's learning rate chosen from the rows of its trial cells (bench/run/matrix.py expands
both; bench/run/driver.py runs the trials first, then the final cells with what was chosen).

A trial trains at one grid value and is scored on the held-out slice of the training split
(``holdout``): its ``holdout_score``. The best one wins, in the task's main metric's
direction; ties go to the first in the grid, and a failed trial, or one without a finite
score, loses. When every trial failed the final cells cannot be run and fail, saying why.
The evaluation split is never read to choose: the final cells' scores stay unbiased.

Trials run on Ray Tune (bench/run/executors/tune_trials.py) are chosen from alike: a trial its
scheduler stopped early is an ok row whose held-out score is its best evaluation's. The final
cells' ``search`` then names the scheduler and counts the trials it stopped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bench.core.records import ResultRecord
from bench.run.matrix import Cell
from bench.run.search_spec import SEARCH_KEYS, check_searchable, lr_grid, search_grids  # noqa: F401  (callers' names)


@dataclass(frozen=True)
class Choice:
    """A final cell's search outcome: ``selection`` to hand to the cell (Cell.selection),
    or ``error`` when no trial gave a usable score; ``pending`` when some trial has no row
    yet (it runs elsewhere), so nothing can be chosen now."""

    selection: dict[str, Any]
    error: str = ""
    pending: bool = False


def trial_score(row: ResultRecord | None) -> float | None:
    """A trial row's held-out score, or None when the trial failed or has no finite score."""
    if row is None or row.status != "ok" or row.holdout_score is None:
        return None
    return row.holdout_score if math.isfinite(row.holdout_score) else None


def choose(final: Cell, latest: Mapping[str, ResultRecord], higher_is_better: bool) -> Choice:
    """The learning rate for ``final`` from its trials' newest rows (``latest``: cell id ->
    newest row). ``final`` is pinned as the driver runs it, so its trials' ids are theirs."""
    trials = final.trials()
    rows = [latest.get(t.id) for t in trials]
    grid = list(final.search["lr"])
    if any(r is None for r in rows):
        return Choice({}, pending=True)
    scores = {str(lr): trial_score(r) for lr, r in zip(grid, rows, strict=True)}
    best: float | None = None
    best_score = math.nan
    for lr, row in zip(grid, rows, strict=True):
        s = trial_score(row)
        if s is not None and (best is None or (s > best_score if higher_is_better else s < best_score)):
            best, best_score = lr, s  # strictly better: a tie keeps the first in the grid
    selection = {"grid": {"lr": grid}, "seed": final.search["seed"], "scores": scores,
                 **({"prefix_length": final.search["prefix_length"]} if "prefix_length" in final.search else {}),
                 "chosen": {} if best is None else {"lr": best}, **_edge(grid, best), "trials": len(trials),
                 "cost_s": float(sum(r.train_seconds + r.eval_seconds for r in rows if r is not None)),
                 **_scheduling(rows)}
    if best is None:
        why = "; ".join(f"lr {lr}: {_first_line(r)}" for lr, r in zip(grid, rows, strict=True))
        return Choice(selection, error=f"every trial of its learning-rate search failed or has no held-out "
                                       f"score, so no learning rate was chosen ({why})"[:2000])
    return Choice(selection)


def _edge(grid: list[float], best: float | None) -> dict[str, str]:
    """``{"edge": "top" | "bottom"}`` when a grid of three or more rates chose its largest or
    smallest: the best rate may lie beyond the grid, so the comparison may measure the grid."""
    if best is None or len(grid) < 3:
        return {}
    return {"edge": "top"} if best == max(grid) else {"edge": "bottom"} if best == min(grid) else {}


def edge_warning(selection: Mapping) -> str:
    """A run log's words for a choice at the edge of its grid ("" for none)."""
    edge = selection.get("edge")
    if edge not in ("top", "bottom"):
        return ""
    beyond = "above" if edge == "top" else "below"
    return f"; the {edge} of its grid: the best rate may lie {beyond} it, widen the grid"


def _scheduling(rows: list[ResultRecord | None]) -> dict[str, Any]:
    """The trials' scheduler (a list when a resumed search ran them under several) and how many
    it stopped early; nothing for trials run as plain cells, so their choice reads as before."""
    named = [r.search["scheduler"] for r in rows if r is not None and isinstance(r.search.get("scheduler"), dict)]
    if not named:
        return {}
    distinct = [s for i, s in enumerate(named) if s not in named[:i]]
    if len(named) < len(rows):
        distinct.append({"name": "grid"})  # some trials ran as plain cells
    return {"scheduler": distinct[0] if len(distinct) == 1 else distinct,
            "stopped_early": sum(1 for r in rows if r is not None and r.search.get("stopped_by_scheduler") is True)}


def _first_line(row: ResultRecord | None) -> str:
    if row is None:
        return "no row"
    if row.status != "ok":
        return (str(row.error).strip().splitlines() or ["failed"])[0][:200]
    return f"held-out score {row.holdout_score!r}"


def selection_problem(selection: Any) -> str:
    """Why a stored ``search`` (a row's, untrusted) cannot give a final cell its learning
    rate back ("" when it can)."""
    chosen = selection.get("chosen") if isinstance(selection, dict) else None
    lr = chosen.get("lr") if isinstance(chosen, dict) else None
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not math.isfinite(lr) or lr <= 0:
        return f"its search holds no chosen learning rate (chosen = {chosen!r:.100})"
    return ""
