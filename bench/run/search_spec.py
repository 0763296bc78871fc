"""A suite's ``search`` table checked (bench/run/matrix.py calls these while expanding;
bench/run/search.py chooses from the trials' rows). Kept apart from the choosing so that
expansion does not import what imports ``Cell``."""

from __future__ import annotations

import math
from typing import Any

from bench.core.config import LIMITS, ConfigError, TrainConfig, unknown_keys

SEARCH_KEYS = ("lr", "seed", "prefix_length", "widen", "widen_steps")  # only the learning rate is searched
# what a choice at an edge of its grid does (bench/run/search.py): "one_se" widens the grid a step
# beyond the edge when the choice beats its neighbour by more than one standard error of a
# held-out accuracy (any margin on a metric without one: MCC, F1, Pearson, BLEU); "any" on every
# edge choice. Left out, an edge choice is only flagged.
WIDEN_RULES = ("one_se", "any")
MAX_WIDEN_STEPS = 3


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
    if widen_rule(where, search) and len(grid) < 3:
        raise ConfigError(f"{where}.search: widen needs a grid of 3 rates or more (it has {len(grid)}): an edge "
                          "choice is only told from an inside one, and a step continued, with 3")
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


def search_length(where: str, spec: dict[str, Any], lengths: list[int]) -> int | None:
    """``search.prefix_length``: the one prefix length a method's trials run at, whose choice
    serves every length of that method (None: each length runs its own trials). It must be on
    the suite's prefix_lengths axis, so the chosen rate was tried where it is used at least once."""
    search = spec.get("search")
    if not isinstance(search, dict) or "prefix_length" not in search:
        return None
    value = search["prefix_length"]
    if isinstance(value, bool) or not isinstance(value, int) or value not in lengths:
        raise ConfigError(f"{where}.search.prefix_length: {value!r} is not one of the suite's prefix_lengths "
                          f"({', '.join(map(str, lengths))}); the trials run at one of them")
    return value


def widen_rule(where: str, search: dict[str, Any]) -> dict[str, Any]:
    """The final cells' part of ``search.widen`` and ``search.widen_steps`` (a step beyond an edge
    choice, at most that many times; default 1): {} when the grid is fixed, so the ids of cells
    whose suite does not widen stay as they were."""
    rule = search.get("widen")
    if rule is None:
        if "widen_steps" in search:
            raise ConfigError(f"{where}.search: widen_steps needs widen (one of {', '.join(WIDEN_RULES)})")
        return {}
    if rule not in WIDEN_RULES:
        raise ConfigError(f"{where}.search.widen: {rule!r:.100} is not a rule; valid: {', '.join(WIDEN_RULES)} "
                          "(one_se: when the edge choice beats its neighbour by more than one standard error of a "
                          "held-out accuracy, or by anything on other metrics; any: every edge choice)")
    steps = search.get("widen_steps", 1)
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_WIDEN_STEPS:
        raise ConfigError(f"{where}.search.widen_steps: expected an integer in [1, {MAX_WIDEN_STEPS}] (extra "
                          f"trials beyond an edge of the grid), got {steps!r:.100}")
    return {"widen": rule, "widen_steps": steps}
