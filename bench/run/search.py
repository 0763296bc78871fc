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


@dataclass(frozen=True)
class Widening:
    """A final cell's grid as its search has grown so far: ``grid``, the rates tried (a step
    below the first, above the last), and ``rows``, their trials' newest rows; ``next``, the
    trial its rule asks for and that has no row yet (None: the grid is settled); ``pending``
    when a trial of the suite's own grid has no row yet."""

    grid: list[float]
    rows: list[ResultRecord | None]
    next: Cell | None = None
    pending: bool = False
    added: tuple[float, ...] = ()
    why: str = ""  # with ``next``: the edge, the margin and what the rule weighed it against


def widened(final: Cell, latest: Mapping[str, ResultRecord], higher_is_better: bool) -> Widening:
    """``final``'s grid after its ``widen`` rule (none: the suite's grid as it is). The rule is
    applied to the trials' rows as they stand, a step at a time up to ``widen_steps``: a choice
    at an edge of the grid (of three rates or more) earns a trial a step beyond it, the grid's own
    pattern continued (``beyond``). ``one_se`` asks it when the choice beats its neighbour by
    more than one standard error of a held-out accuracy, sqrt(p (1 - p) / n) at the choice's
    score p over the n held-out examples, and always on a metric without one (MCC, F1,
    Pearson, BLEU: no closed form to weigh a margin against); ``any`` always. A failed
    neighbour counts as beaten by any margin. Decided before any trial runs and applied to
    every method alike, so the extra budget is the rule's, not a person's."""
    grid = list(final.search["lr"])
    rows = [latest.get(final.trial_at(lr).id) for lr in grid]
    if any(r is None for r in rows):
        return Widening(grid, rows, pending=True)
    rule, added = final.search.get("widen"), []
    for _ in range(final.search.get("widen_steps", 1) if rule else 0):
        best = _best(grid, rows, higher_is_better)
        edge = _edge(grid, None if best is None else grid[best]).get("edge")
        if edge is None:
            break
        order = sorted(range(len(grid)), key=grid.__getitem__)
        neighbour = order[1] if edge == "bottom" else order[-2]
        fires, why = _rule_fires(rule, rows[best], rows[neighbour], higher_is_better)
        if not fires:
            break
        lr = beyond(sorted(grid), edge)
        row = latest.get(final.trial_at(lr).id)
        if row is None:
            return Widening(grid, rows, next=final.trial_at(lr), added=tuple(added),
                            why=f"{grid[best]:g} at the {edge} of {', '.join(f'{x:g}' for x in grid)}, {why}")
        added.append(lr)
        grid, rows = ([lr, *grid], [row, *rows]) if edge == "bottom" else ([*grid, lr], [*rows, row])
    return Widening(grid, rows, added=tuple(added))


def beyond(ordered: list[float], edge: str) -> float:
    """The rate a step past ``edge`` of the ascending grid ``ordered``, its pattern continued:
    the step two places in (1e-4 below [3e-4, 1e-3, 3e-3], 1e-2 above; 5e-5 and 8e-4 around
    [1e-4, 2e-4, 4e-4]), rounded to 12 significant digits so 3e-4 / 3 is 1e-4."""
    if edge == "bottom":
        value = ordered[0] / (ordered[2] / ordered[1])
    else:
        value = ordered[-1] * (ordered[-2] / ordered[-3])
    return float(f"{value:.12g}")


def _rule_fires(rule: str, best: ResultRecord | None, neighbour: ResultRecord | None,
                higher_is_better: bool) -> tuple[bool, str]:
    """Whether ``rule`` widens past the edge choice ``best``, and the words for the log."""
    won, other = trial_score(best), trial_score(neighbour)
    if won is None or other is None:
        return other is None, "its neighbour failed"
    margin = won - other if higher_is_better else other - won
    if rule == "any":
        return True, f"ahead of its neighbour by {margin:.4f} (widen = any)"
    error = held_out_error(best)
    if error is None:
        return True, f"ahead of its neighbour by {margin:.4f} on a metric without a standard error (widen = one_se)"
    return margin > error, f"ahead of its neighbour by {margin:.4f} > one standard error {error:.4f} (widen = one_se)"


def held_out_error(row: ResultRecord | None) -> float | None:
    """One standard error of a trial's held-out accuracy, sqrt(p (1 - p) / n); None for any
    other metric (no closed form) or a row without its count."""
    score = trial_score(row)
    n = getattr(row, "eval_examples", None)
    if score is None or row is None or row.main_metric != "accuracy" or not isinstance(n, int) or n < 1 \
            or not 0.0 <= score <= 1.0:
        return None
    return math.sqrt(score * (1.0 - score) / n)


def _best(grid: list[float], rows: list[ResultRecord | None], higher_is_better: bool) -> int | None:
    """The index of the best-scoring trial; strictly better wins, so a tie keeps the first."""
    best: int | None = None
    best_score = math.nan
    for i, row in enumerate(rows):
        s = trial_score(row)
        if s is not None and (best is None or (s > best_score if higher_is_better else s < best_score)):
            best, best_score = i, s
    return best


def choose(final: Cell, latest: Mapping[str, ResultRecord], higher_is_better: bool) -> Choice:
    """The learning rate for ``final`` from its trials' newest rows (``latest``: cell id ->
    newest row), over its grid as its ``widen`` rule grew it. ``final`` is pinned as the
    driver runs it, so its trials' ids are theirs. Pending while a trial the grid needs has
    no row (the driver runs a widening trial before it hands out the choices)."""
    w = widened(final, latest, higher_is_better)
    if w.pending or w.next is not None:
        return Choice({}, pending=True)
    grid, rows = w.grid, w.rows
    scores = {str(lr): trial_score(r) for lr, r in zip(grid, rows, strict=True)}
    index = _best(grid, rows, higher_is_better)
    best = None if index is None else grid[index]
    widening = {"widen": final.search["widen"], "added": list(w.added)} if final.search.get("widen") else {}
    selection = {"grid": {"lr": grid}, "seed": final.search["seed"], "scores": scores,
                 **({"prefix_length": final.search["prefix_length"]} if "prefix_length" in final.search else {}),
                 "chosen": {} if best is None else {"lr": best}, **_edge(grid, best), "trials": len(grid),
                 "cost_s": float(sum(r.train_seconds + r.eval_seconds for r in rows if r is not None)),
                 **({"widened": widening} if widening else {}), **_scheduling(rows)}
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
    """A run log's words for a choice at the edge of its grid, and for a grid its rule widened
    ("" for neither)."""
    widening = selection.get("widened")
    added = widening.get("added") if isinstance(widening, dict) else None
    note = (f"; grid widened by {', '.join(map(str, added))} (widen = {widening.get('widen')})"
            if isinstance(added, list) and added else "")
    edge = selection.get("edge")
    if edge not in ("top", "bottom"):
        return note
    side = "above" if edge == "top" else "below"
    return f"{note}; the {edge} of its grid: the best rate may lie {side} it, widen the grid"


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
