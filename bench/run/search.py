"""Equal-budget learning-rate search: a suite's ``search`` table checked, and each final
cell's learning rate chosen from the rows of its trial cells (bench/run/matrix.py expands
both; bench/run/driver.py runs the trials first, then the final cells with what was chosen).

A trial trains at one grid value and is scored on the held-out slice of the training split
(``holdout``): its ``holdout_score``. The best one wins, in the task's main metric's
direction; ties go to the first in the grid, and a failed trial, or one without a finite
score, loses. When every trial failed the final cells cannot be run and fail, saying why.
The evaluation split is never read to choose: the final cells' scores stay unbiased.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bench.core.config import LIMITS, ConfigError, TrainConfig, unknown_keys
from bench.core.records import ResultRecord

if TYPE_CHECKING:  # matrix imports this module to check a suite's search
    from bench.run.matrix import Cell

SEARCH_KEYS = ("lr", "seed")  # only the learning rate is searched


def check_searchable(where: str, cfg: TrainConfig, train: dict[str, Any]) -> None:
    """A searched cell selects on its held-out slice and takes its lr from the grid."""
    if cfg.holdout <= 0:
        raise ConfigError(f"{where}: a suite with 'search' needs holdout > 0 for every cell (this one has holdout "
                          f"= {cfg.holdout!r}): selection never reads the evaluation split, so the trials are "
                          "scored on a held-out slice of the training split; set e.g. train = { holdout = 0.2 }")
    if "lr" in train:
        raise ConfigError(f"{where}: lr = {train['lr']!r} is set, but this suite searches the learning rate: "
                          "remove lr from [defaults], train and overrides; per-method grids go in "
                          "search_overrides.<method> = { lr = [...] }")


def lr_grid(where: str, value: Any) -> list[float]:
    """A list of distinct finite learning rates > 0, as floats."""
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}: expected a non-empty list of learning rates, got {value!r:.200}")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
            raise ConfigError(f"{where}: holds {v!r}, learning rates must be finite numbers > 0")
    grid = [float(v) for v in value]
    if len(set(grid)) != len(grid):
        raise ConfigError(f"{where}: repeats a value: {value!r}")
    return grid


def search_grids(where: str, spec: dict[str, Any], methods: list[str],
                 seeds: list[int]) -> tuple[dict[str, list[float]], int]:
    """Each method's learning-rate grid ({} without ``search``) and the trials' seed. Every
    grid has the suite's length: unequal budgets would make the comparison measure them."""
    search = spec.get("search")
    if search is None:
        if "search_overrides" in spec:
            raise ConfigError(f"{where}: 'search_overrides' needs a 'search' table (search = {{ lr = [...] }})")
        return {}, 0
    if not isinstance(search, dict):
        raise ConfigError(f"{where}: 'search' must be a table such as {{ lr = [1e-4, 3e-4, 1e-3] }}, got {search!r:.200}")
    unknown = sorted(set(search) - set(SEARCH_KEYS))
    if unknown:
        raise ConfigError(unknown_keys(f"{where}.search (only the learning rate is searched)", unknown, SEARCH_KEYS))
    if "lr" not in search:
        raise ConfigError(f"{where}.search: missing 'lr', the grid of learning rates (lr = [1e-4, 3e-4, 1e-3])")
    grid = lr_grid(f"{where}.search.lr", search["lr"])
    seed = search.get("seed", seeds[0])
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"{where}.search.seed: expected an integer seed, got {seed!r}")
    if not 0 <= seed <= LIMITS["seed"][0]:
        raise ConfigError(f"{where}.search: seed {seed} is not a seed: seeds must be in [0, {LIMITS['seed'][0]}]")
    overrides = spec.get("search_overrides", {})
    if not isinstance(overrides, dict):
        raise ConfigError(f"{where}: 'search_overrides' must be a table keyed by method")
    grids = {m: grid for m in methods}
    for method, table in overrides.items():
        if method not in methods:
            raise ConfigError(f"{where}: search_overrides.{method}: {method!r} is not on this suite's axis; "
                              f"valid: {', '.join(methods)}")
        if not isinstance(table, dict):
            raise ConfigError(f"{where}.search_overrides.{method}: expected a table, got {table!r:.200}")
        bad = sorted(set(table) - {"lr"})
        if bad:
            raise ConfigError(unknown_keys(f"{where}.search_overrides.{method}", bad, ("lr",)))
        own = lr_grid(f"{where}.search_overrides.{method}.lr", table.get("lr"))
        if len(own) != len(grid):
            raise ConfigError(f"{where}: search_overrides.{method}.lr has {len(own)} values but search.lr has "
                              f"{len(grid)}: every method gets the same number of trials (unequal budgets would "
                              "make the comparison measure the budget, not the method)")
        grids[method] = own
    return grids, seed


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
                 "chosen": {} if best is None else {"lr": best}, "trials": len(trials),
                 "cost_s": float(sum(r.train_seconds + r.eval_seconds for r in rows if r is not None))}
    if best is None:
        why = "; ".join(f"lr {lr}: {_first_line(r)}" for lr, r in zip(grid, rows, strict=True))
        return Choice(selection, error=f"every trial of its learning-rate search failed or has no held-out "
                                       f"score, so no learning rate was chosen ({why})"[:2000])
    return Choice(selection)


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
