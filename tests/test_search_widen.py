"""A search's widen rule: a choice at an edge of its grid earns a trial a step beyond it, by a
rule fixed in the suite before any trial runs (bench/run/search.py ``widened``)."""

from __future__ import annotations

import math

import pytest
import torch

from bench.core.config import ConfigError
from bench.core.records import ResultRecord, read_records
from bench.run import search
from bench.run.driver import run_cells
from bench.run.matrix import Cell, expand

CPU = torch.device("cpu")
GRID = [1e-3, 3e-3, 1e-2]


def suite(**search_spec) -> dict:
    spec = {"methods": ["prefix_tuning"], "tasks": ["glue/sst2"], "backbones": ["tiny-llama"],
            "prefix_lengths": [2], "seeds": [0, 1],
            "train": {"train_steps": 2, "batch_size": 4, "eval_limit": 7, "eval_batch_size": 8, "train_limit": 40,
                      "max_length": 32, "holdout": 0.25},
            "search": {"lr": GRID, **search_spec}}
    return {"suites": {"s": spec}}


def final(**search_spec) -> Cell:
    return next(c for c in expand(suite(**search_spec), "s") if not c.is_trial)


def row(cell: Cell, score: float | None, metric: str = "accuracy", n: int = 800, status: str = "ok") -> ResultRecord:
    return ResultRecord(cell_id=cell.id, suite="s", method=cell.method, task=cell.task, backbone=cell.backbone,
                        prefix_length=cell.prefix_length, seed=cell.seed, status=status, role=cell.role,
                        main_metric=metric, eval_examples=n, holdout_score=score, train_seconds=1.0, eval_seconds=0.5)


def rows_at(cell: Cell, scores: dict[float, float | None], **kw) -> dict[str, ResultRecord]:
    return {cell.trial_at(lr).id: row(cell.trial_at(lr), s, **kw) for lr, s in scores.items()}


@pytest.mark.parametrize("grid,edge,expected", [
    ([3e-4, 1e-3, 3e-3], "bottom", 1e-4), ([3e-4, 1e-3, 3e-3], "top", 1e-2),
    ([1e-4, 2e-4, 4e-4], "bottom", 5e-5), ([1e-4, 2e-4, 4e-4], "top", 8e-4),
    ([1e-2, 3e-2, 1e-1], "bottom", 3e-3), ([1e-2, 3e-2, 1e-1], "top", 0.3),
    ([1e-4, 3e-4, 1e-3, 3e-3], "bottom", 3e-5),
])
def test_a_step_beyond_an_edge_continues_the_grids_own_pattern(grid, edge, expected):
    assert search.beyond(grid, edge) == expected  # exactly: 3e-4 / 3 is 1e-4, not 9.999999999999999e-05


def test_without_widen_the_ids_and_the_choice_are_as_before():
    plain, widening = final(), final(widen="any")
    assert "widen" not in plain.search and plain.id != widening.id
    assert widening.search["widen"] == "any" and widening.search["widen_steps"] == 1
    assert [t.id for t in plain.trials()] == [t.id for t in widening.trials()]  # the trials are shared
    latest = rows_at(plain, {1e-3: 0.9, 3e-3: 0.5, 1e-2: 0.5})
    w = search.widened(plain, latest, True)
    assert w.next is None and w.grid == GRID
    assert search.choose(plain, latest, True).selection["edge"] == "bottom"


def test_one_se_weighs_an_accuracy_margin_against_its_standard_error():
    cell = final(widen="one_se")
    se = math.sqrt(0.9 * 0.1 / 800)  # 0.0106
    within = rows_at(cell, {1e-3: 0.9, 3e-3: 0.9 - se / 2, 1e-2: 0.5})
    assert search.widened(cell, within, True).next is None
    choice = search.choose(cell, within, True)
    assert choice.selection["chosen"] == {"lr": 1e-3} and choice.selection["edge"] == "bottom"
    assert choice.selection["widened"] == {"widen": "one_se", "added": []}
    beyond_se = rows_at(cell, {1e-3: 0.9, 3e-3: 0.9 - 2 * se, 1e-2: 0.5})
    w = search.widened(cell, beyond_se, True)
    assert w.next is not None and w.next.is_trial and w.next.train["lr"] == pytest.approx(1e-3 / (1e-2 / 3e-3))
    assert w.why == ("0.001 at the bottom of 0.001, 0.003, 0.01, ahead of its neighbour by 0.0212 > one standard "
                     "error 0.0106 (widen = one_se)")
    assert search.choose(cell, beyond_se, True).pending  # the extra trial is run before any choice
    # fewer held-out examples, a larger error: the same margin no longer widens
    assert search.widened(cell, rows_at(cell, {1e-3: 0.9, 3e-3: 0.9 - 2 * se, 1e-2: 0.5}, n=100), True).next is None
    # at the top, in the metric's direction (lower is better)
    top = rows_at(cell, {1e-3: 0.5, 3e-3: 0.3, 1e-2: 0.1}, metric="loss")
    assert search.widened(cell, top, False).next.train["lr"] == pytest.approx(3e-2)


def test_one_se_widens_on_any_margin_of_a_metric_without_one_and_past_a_failed_neighbour():
    cell = final(widen="one_se")
    tie = rows_at(cell, {1e-3: 30.0, 3e-3: 30.0, 1e-2: 20.0}, metric="bleu")  # a tie goes to the first: an edge
    assert "by 0.0000 on a metric without a standard error" in search.widened(cell, tie, True).why
    failed = rows_at(cell, {1e-3: 0.9, 1e-2: 0.5})
    failed.update({cell.trial_at(3e-3).id: row(cell.trial_at(3e-3), None, status="failed")})
    assert search.widened(cell, failed, True).next is not None
    assert search.widened(cell, failed, True).why.endswith("its neighbour failed")
    inside = rows_at(cell, {1e-3: 0.5, 3e-3: 0.9, 1e-2: 0.5})
    assert search.widened(cell, inside, True).next is None


def test_the_widened_trial_joins_the_choice_and_steps_stop_at_widen_steps():
    cell = final(widen="any", widen_steps=2)
    latest = rows_at(cell, {1e-3: 0.80, 3e-3: 0.70, 1e-2: 0.60})
    first = search.widened(cell, latest, True).next
    latest.update(rows_at(cell, {first.train["lr"]: 0.85}))
    second = search.widened(cell, latest, True).next  # the new rate is best, at the new bottom: a second step
    assert second.train["lr"] == pytest.approx(1e-4)
    latest.update(rows_at(cell, {1e-4: 0.90}))
    w = search.widened(cell, latest, True)
    assert w.next is None and w.grid == [1e-4, 3e-4, 1e-3, 3e-3, 1e-2] and w.added == (3e-4, 1e-4)
    selection = search.choose(cell, latest, True).selection
    assert selection["chosen"] == {"lr": 1e-4} and selection["trials"] == 5 and selection["edge"] == "bottom"
    assert selection["widened"] == {"widen": "any", "added": [3e-4, 1e-4]}
    assert selection["cost_s"] == pytest.approx(5 * 1.5)
    assert "grid widened by 0.0003, 0.0001 (widen = any)" in search.edge_warning(selection)
    # a worse extra trial leaves the choice inside the widened grid
    latest.update(rows_at(cell, {1e-4: 0.10}))
    selection = search.choose(cell, latest, True).selection
    assert selection["chosen"] == {"lr": 3e-4} and "edge" not in selection


@pytest.mark.parametrize("spec,message", [
    ({"widen": "always"}, r"search.widen: 'always' is not a rule; valid: one_se, any"),
    ({"widen": "any", "widen_steps": 0}, r"widen_steps: expected an integer in \[1, 3\].*got 0"),
    ({"widen": "any", "widen_steps": True}, r"widen_steps: expected an integer"),
    ({"widen_steps": 2}, r"widen_steps needs widen \(one of one_se, any\)"),
    ({"widen": "any", "lr": [1e-3, 1e-2]}, r"widen needs a grid of 3 rates or more \(it has 2\)"),
])
def test_bad_widen_options_are_config_errors(spec, message):
    with pytest.raises(ConfigError, match=message):
        expand(suite(**spec), "s")


def test_the_driver_runs_the_widening_trials_before_the_finals_and_resumes(tmp_path, data, monkeypatch):
    """The rule runs itself: trials, then the trials a step beyond each edge choice, then the finals
    at the widened grid's choice; a second run finds all of it finished."""
    real = search.trial_score

    def smaller_is_better(r):  # every choice at the bottom edge, whatever tiny-llama scores
        s = real(r)
        return None if s is None else -r.config["train"]["lr"]

    monkeypatch.setattr(search, "trial_score", smaller_is_better)
    cells = expand(suite(widen="any", widen_steps=2), "s")
    logs: list[str] = []
    counts = run_cells(cells, tmp_path, data, CPU, log=logs.append, trials_only=True)
    rows = read_records(tmp_path)[0]
    assert counts["failed"] == 0, [r.error for r in rows]
    assert sorted(r.config["train"]["lr"] for r in rows) == pytest.approx([1e-4, 3e-4, 1e-3, 3e-3, 1e-2])
    assert all(r.role == "trial" for r in rows)
    assert any("0.001 at the bottom of 0.001, 0.003, 0.01, ahead of its neighbour by" in line
               and "one more trial at lr 0.0003" in line for line in logs)
    assert any("one more trial at lr 0.0001" in line for line in logs)
    counts = run_cells(cells, tmp_path, data, CPU, log=logs.append)
    finals = [r for r in read_records(tmp_path)[0] if r.role != "trial"]
    assert counts["ran"] == 2 and len(finals) == 2
    assert {r.lr for r in finals} == {1e-4}
    assert finals[0].search["grid"] == {"lr": [1e-4, 3e-4, 1e-3, 3e-3, 1e-2]}
    assert finals[0].search["widened"] == {"widen": "any", "added": [3e-4, 1e-4]}
    assert run_cells(cells, tmp_path, data, CPU, log=logs.append)["ran"] == 0
