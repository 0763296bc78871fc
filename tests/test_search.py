"""Equal-budget learning-rate search on a held-out slice of the training split, and early
stopping on that slice (bench/run/search.py, bench/run/data.py, bench/run/trainer.py)."""

from __future__ import annotations

import copy
import dataclasses
import math
import pickle

import pytest
import torch

import bench.run.cell as cell_mod
import bench.run.data as data_mod
import bench.run.validate as validate_mod
from bench.core.config import ConfigError, TrainConfig
from bench.core.records import ResultRecord, latest_by_cell, read_records
from bench.report.views import records_frame
from bench.run import packed, search
from bench.run.cell import attach, prepare, run_cell
from bench.run.driver import pinned_cells, run_cells
from bench.run.executors import LocalExecutor
from bench.run.matrix import Cell, expand
from bench.run.rerun import stored_cell
from bench.run.trainer import NonFiniteLossError, train
from tasks import TASKS

CPU = torch.device("cpu")
GRID = [1e-3, 3e-2]


def suite(**spec) -> dict:
    base = {"methods": ["prefix_tuning"], "tasks": ["glue/sst2"], "backbones": ["tiny-llama"],
            "prefix_lengths": [2], "seeds": [0, 1],
            # an odd eval_limit: with every binary label flipped, accuracy k/7 becomes 1 - k/7, never
            # the same number, so a selection that read the evaluation split cannot go unnoticed
            "train": {"train_steps": 3, "batch_size": 4, "eval_limit": 7, "eval_batch_size": 8, "train_limit": 40,
                      "max_length": 32, "holdout": 0.25},
            "search": {"lr": GRID}}
    return {"suites": {"s": {**base, **spec}}}


def quiet(_: str) -> None:
    pass


# --- expansion and configuration ------------------------------------------------------------------

def test_a_search_expands_into_trials_then_final_cells_whose_id_covers_the_grid():
    cells = expand(suite(methods=["prefix_tuning", "lora"], search={"lr": GRID, "seed": 1}), "s")
    trials = [c for c in cells if c.is_trial]
    finals = [c for c in cells if not c.is_trial]
    # every method gets the same number of trials: one per grid value, at the search seed
    assert sorted((c.method, c.train["lr"]) for c in trials) == sorted(
        (m, lr) for m in ("prefix_tuning", "lora") for lr in GRID)
    assert {c.seed for c in trials} == {1} and all(c.train["holdout"] == 0.25 for c in cells)
    assert sorted((c.method, c.seed) for c in finals) == [("lora", 0), ("lora", 1), ("prefix_tuning", 0),
                                                         ("prefix_tuning", 1)]
    for c in finals:
        assert c.train["lr"] is None and c.search == {"lr": GRID, "seed": 1}
        assert {t.id for t in c.trials()} <= {t.id for t in trials}
        # what the search chooses travels outside the id: resume finds the planned row
        chosen = dataclasses.replace(c, selection={"chosen": {"lr": GRID[1]}})
        assert chosen.id == c.id and chosen.train_config.lr == GRID[1] and c.train_config.lr is None
        assert "selection" not in c.resolved() and c.resolved()["search"] == c.search
    assert len({c.id for c in cells}) == len(cells)
    # another grid is another final cell
    other = expand(suite(search={"lr": [1e-3, 1e-2]}), "s")
    assert not {c.id for c in other if not c.is_trial} & {c.id for c in finals}


def test_cells_without_search_or_holdout_keep_their_form():
    doc = suite()
    del doc["suites"]["s"]["search"]
    doc["suites"]["s"]["train"] = {"train_steps": 3}
    for c in expand(doc, "s"):
        # off-by-default options stay out of the id, so ids planned before them are unchanged
        assert "holdout" not in c.train and "patience" not in c.train
        assert "role" not in c.resolved() and "search" not in c.resolved() and c.role == "" and not c.trials()


@pytest.mark.parametrize("change,message", [
    ({"search_overrides": {"prefix_tuning": {"lr": [1e-3, 1e-2, 1e-1]}}},
     r"search_overrides.prefix_tuning.lr has 3 values but search.lr has 2: every method gets the same number"),
    ({"train": {"train_steps": 3}}, r"needs holdout > 0 .*selection never reads the evaluation split"),
    ({"overrides": {"prefix_tuning": {"lr": 1e-3}}}, r"lr = 0.001 is set, but this suite searches the learning rate"),
    ({"search": {"lr": [1e-3, -1.0]}}, r"search.lr: holds -1.0, learning rates must be finite numbers > 0"),
    ({"search": {"lr": [1e-3, 1e-3]}}, r"search.lr: repeats a value"),
    ({"search": {"lr": GRID, "wd": [0.1]}}, r"unknown key\(s\) 'wd'"),
    ({"search": {"lr": GRID, "seed": -1}}, r"seeds must be in"),
    ({"search": None, "search_overrides": {"prefix_tuning": {"lr": GRID}}}, r"'search_overrides' needs a 'search'"),
])
def test_bad_searches_are_config_errors(change, message):
    doc = suite(methods=["prefix_tuning", "lora"])
    spec = doc["suites"]["s"]
    for key, value in change.items():
        if value is None:
            spec.pop(key)
        else:
            spec[key] = value
    with pytest.raises(ConfigError, match=message):
        expand(doc, "s")


def test_a_search_at_one_prefix_length_serves_every_length():
    """search.prefix_length: one set of trials per (method, task, backbone), at that length; the
    final cells of every length take its choice. Methods without a prefix keep their own form."""
    cells = expand(suite(methods=["prefix_tuning", "lora"], prefix_lengths=[2, 4, 8],
                         search={"lr": GRID, "prefix_length": 4}), "s")
    trials = [c for c in cells if c.is_trial]
    assert sorted((c.method, c.prefix_length) for c in trials) == sorted(
        [("prefix_tuning", 4)] * len(GRID) + [("lora", None)] * len(GRID))
    finals = [c for c in cells if not c.is_trial and c.method == "prefix_tuning"]
    assert sorted({c.prefix_length for c in finals}) == [2, 4, 8]
    for c in finals:
        assert c.search["prefix_length"] == 4 and {t.prefix_length for t in c.trials()} == {4}
        assert {t.id for t in c.trials()} <= {t.id for t in trials}
    assert all("prefix_length" not in c.search for c in cells if c.method == "lora" and not c.is_trial)
    # per-length trials (no search.prefix_length) are another plan: 3 lengths, 3 sets of trials
    per_length = expand(suite(methods=["prefix_tuning"], prefix_lengths=[2, 4, 8]), "s")
    assert len([c for c in per_length if c.is_trial]) == 3 * len(GRID)
    with pytest.raises(ConfigError, match=r"search.prefix_length: 5 is not one of the suite's prefix_lengths \(2, 4, 8\)"):
        expand(suite(prefix_lengths=[2, 4, 8], search={"lr": GRID, "prefix_length": 5}), "s")


def test_equal_length_search_overrides_give_each_method_its_own_grid():
    cells = expand(suite(methods=["prefix_tuning", "lora"],
                         search_overrides={"lora": {"lr": [1e-4, 1e-2]}}), "s")
    assert sorted(c.train["lr"] for c in cells if c.is_trial and c.method == "lora") == [1e-4, 1e-2]
    assert sorted(c.train["lr"] for c in cells if c.is_trial and c.method == "prefix_tuning") == GRID


@pytest.mark.parametrize("options,message", [
    ({"holdout": 0.5}, r"holdout must be in \[0, 0.5\) .*got 0.5"),
    ({"holdout": -0.1}, r"holdout must be in \[0, 0.5\) .*got -0.1"),
    ({"patience": 2, "eval_every": 1}, r"patience = 2 needs holdout > 0 and eval_every > 0 .*holdout = 0.0, eval_every = 1"),
    ({"patience": 2, "holdout": 0.2}, r"patience = 2 needs holdout > 0 and eval_every > 0 .*eval_every = 0"),
    ({"patience": -1}, r"patience must be >= 0"),
])
def test_holdout_and_patience_are_checked(options, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**options)


# --- choosing ------------------------------------------------------------------------------------------

def _final() -> Cell:
    return next(c for c in expand(suite(), "s") if not c.is_trial)


def _row(cell: Cell, status: str = "ok", score: float | None = 0.5, seconds: float = 1.0) -> ResultRecord:
    return ResultRecord(cell_id=cell.id, suite="s", method=cell.method, task=cell.task, backbone=cell.backbone,
                        prefix_length=cell.prefix_length, seed=cell.seed, status=status, role=cell.role,
                        holdout_score=score, train_seconds=seconds, eval_seconds=0.5, error="boom" if status != "ok" else "")


def test_choice_takes_the_best_held_out_score_in_the_metrics_direction_ties_to_the_first():
    final = _final()
    lo, hi = final.trials()
    rows = {lo.id: _row(lo, score=0.5), hi.id: _row(hi, score=0.75)}
    assert search.choose(final, rows, higher_is_better=True).selection["chosen"] == {"lr": GRID[1]}
    assert search.choose(final, rows, higher_is_better=False).selection["chosen"] == {"lr": GRID[0]}
    tie = {lo.id: _row(lo, score=0.5), hi.id: _row(hi, score=0.5)}
    choice = search.choose(final, tie, higher_is_better=True)
    assert choice.selection["chosen"] == {"lr": GRID[0]} and not choice.error
    assert choice.selection["scores"] == {str(GRID[0]): 0.5, str(GRID[1]): 0.5}
    assert choice.selection["trials"] == 2 and choice.selection["cost_s"] == pytest.approx(3.0)
    # a failed or NaN trial loses, however good its number
    failed = {lo.id: _row(lo, score=0.1), hi.id: _row(hi, status="failed", score=0.99)}
    assert search.choose(final, failed, True).selection["chosen"] == {"lr": GRID[0]}
    nan = {lo.id: _row(lo, score=0.1), hi.id: _row(hi, score=math.nan)}
    assert search.choose(final, nan, True).selection["chosen"] == {"lr": GRID[0]}
    # every trial failed: no choice, and a reason naming each trial
    none = {lo.id: _row(lo, status="failed"), hi.id: _row(hi, status="failed")}
    choice = search.choose(final, none, True)
    assert choice.selection["chosen"] == {} and "every trial of its learning-rate search failed" in choice.error
    assert choice.error.count("boom") == 2
    # a trial without a row yet: nothing is chosen now
    assert search.choose(final, {lo.id: _row(lo)}, True).pending


def test_a_choice_at_the_edge_of_a_grid_says_so():
    final = next(c for c in expand(suite(search={"lr": [1e-3, 1e-2, 3e-2]}), "s") if not c.is_trial)
    trials = final.trials()

    def chosen(scores):
        return search.choose(final, {t.id: _row(t, score=v) for t, v in zip(trials, scores, strict=True)}, True).selection

    assert chosen([0.5, 0.6, 0.7])["edge"] == "top" and "above it, widen" in search.edge_warning(chosen([0.5, 0.6, 0.7]))
    assert chosen([0.7, 0.6, 0.5])["edge"] == "bottom"
    assert "edge" not in chosen([0.5, 0.7, 0.6]) and search.edge_warning(chosen([0.5, 0.7, 0.6])) == ""
    # two rates: every choice is an edge, so nothing is said
    assert "edge" not in search.choose(_final(), {t.id: _row(t, score=v) for t, v in
                                                  zip(_final().trials(), [0.5, 0.6], strict=True)}, True).selection


def test_the_chosen_lr_survives_pickling_and_comes_back_from_the_row():
    final = dataclasses.replace(_final(), selection={"chosen": {"lr": GRID[1]}, "grid": {"lr": GRID}})
    back = pickle.loads(pickle.dumps(final))  # how cells reach subprocess, Ray and Slurm workers
    assert back.selection == final.selection and back.id == final.id and back.train_config.lr == GRID[1]
    # a cell rebuilt from its stored config (reproduce) takes the choice from the row's search
    row = dataclasses.replace(_row(final), config=final.resolved(), search=dict(final.selection))
    rebuilt = stored_cell(row)
    assert rebuilt.id == final.id and rebuilt.train_config.lr == GRID[1]
    # untrusted: a row without a usable choice is refused, and a config cannot smuggle one in
    with pytest.raises(ConfigError, match="no chosen learning rate"):
        stored_cell(dataclasses.replace(row, search={"chosen": {"lr": "fast"}}))
    smuggled = dataclasses.replace(row, config={**final.resolved(), "selection": {"chosen": {"lr": 9.0}}})
    assert stored_cell(smuggled).train_config.lr == GRID[1]


# --- the held-out slice and isolation from the evaluation split --------------------------------------

def test_the_held_out_slice_comes_from_the_training_split_disjoint_and_the_same_for_every_seed(data):
    cells = pinned_cells(expand(suite(), "s"))
    slices = []
    for cell in [c for c in cells if not c.is_trial] + [c for c in cells if c.is_trial]:
        cell = dataclasses.replace(cell, selection={"chosen": {"lr": GRID[0]}}) if cell.search else cell
        run = prepare(cell, data, CPU)
        attach(run)
        train_ids = {id(e) for e in run.train_split.examples}
        assert run.holdout_examples and all(id(e) in train_ids for e in run.holdout_examples)
        assert not {id(e) for e in run.holdout_examples} & {id(e) for e in run.train_examples}
        assert len(run.holdout_examples) == 10 and len(run.train_examples) == 30  # 25% of train_limit 40
        slices.append([id(e) for e in run.holdout_examples])
    assert all(s == slices[0] for s in slices)  # every seed and every trial: the same examples


def _guard_eval_split(monkeypatch) -> list[str]:
    """Make any read of the evaluation split by a cell, its worker or the driver's per-cell
    checks raise; returns the splits read."""
    seen: list[str] = []
    real = data_mod.load_split

    def guarded(task_name, split, data, task_args=None):
        seen.append(split)
        if split == TASKS.get(task_name).eval_split:
            raise AssertionError(f"the evaluation split {split!r} was read")
        return real(task_name, split, data, task_args)

    for module in (data_mod, cell_mod, validate_mod):
        monkeypatch.setattr(module, "load_split", guarded)
    return seen


def test_trials_never_load_the_evaluation_split(tmp_path, data, monkeypatch):
    trials = [c for c in expand(suite(), "s") if c.is_trial]
    seen = _guard_eval_split(monkeypatch)
    counts = run_cells(trials, tmp_path, data, CPU, log=quiet)
    rows = read_records(tmp_path)[0]
    assert counts["ran"] == 2 and counts["failed"] == 0, [r.error for r in rows]
    assert seen and set(seen) == {"train"}
    for r in rows:
        assert r.role == "trial" and r.eval_examples == r.eval_split_size == 10  # the held-out slice
        assert r.main_score == r.holdout_score and r.metrics["accuracy"] == r.holdout_score
        assert r.data_fingerprint.endswith("/-") and "held-out slice" in r.data_source


def _poisoned(monkeypatch) -> list[int]:
    """Every evaluation label flipped (SST-2: 0 <-> 1), read afresh; returns the flips made."""
    task = TASKS.get("glue/sst2")
    real = type(task).load
    flips: list[int] = []

    def load(self, split, data):
        loaded = real(self, split, data)
        if split != self.eval_split:
            return loaded
        flips.append(len(loaded.examples))
        return dataclasses.replace(loaded, examples=[dataclasses.replace(e, label=1 - e.label)
                                                     for e in loaded.examples])

    monkeypatch.setattr(type(task), "load", load)
    monkeypatch.setattr(data_mod, "_SPLITS", {})
    return flips


def test_poisoned_evaluation_labels_change_no_trial_score_and_not_the_choice(tmp_path, data, monkeypatch):
    cells = expand(suite(), "s")
    run_cells(cells, tmp_path / "clean", data, CPU, log=quiet)
    clean = read_records(tmp_path / "clean")[0]
    flips = _poisoned(monkeypatch)
    run_cells(cells, tmp_path / "poisoned", data, CPU, log=quiet)
    poisoned = read_records(tmp_path / "poisoned")[0]
    assert flips, "the poisoned loader was never asked for the evaluation split"
    trial = {r.cell_id: r for r in clean if r.role == "trial"}
    trial_p = {r.cell_id: r for r in poisoned if r.role == "trial"}
    assert trial.keys() == trial_p.keys() and len(trial) == len(GRID)
    for cid, r in trial.items():  # bit-identical: no selection number reads the evaluation split
        assert r.status == trial_p[cid].status == "ok" and r.holdout_score is not None
        assert (r.holdout_score, r.metrics) == (trial_p[cid].holdout_score, trial_p[cid].metrics)
    finals = {r.cell_id: r for r in clean if r.role != "trial"}
    finals_p = {r.cell_id: r for r in poisoned if r.role != "trial"}
    assert finals.keys() == finals_p.keys() and len(finals) == 2
    for cid, r in finals.items():
        assert r.search["chosen"] == finals_p[cid].search["chosen"] and r.lr == finals_p[cid].lr
        assert r.search["scores"] == finals_p[cid].search["scores"]
        assert r.holdout_score == finals_p[cid].holdout_score
        # the poison did reach the final evaluation: every prediction now scores the other way
        assert finals_p[cid].main_score == pytest.approx(1 - r.main_score)


# --- the search end to end ------------------------------------------------------------------------

def test_the_search_runs_trials_then_finals_with_the_choice_and_resumes(tmp_path, data):
    cells = expand(suite(methods=["prefix_tuning", "prompt_tuning"]), "s")
    logs: list[str] = []
    counts = run_cells(cells, tmp_path, data, CPU, log=logs.append, executor=LocalExecutor(LocalExecutor.Config(pack=4)))
    rows = read_records(tmp_path)[0]
    assert counts["failed"] == 0, [r.error for r in rows]
    trials = [r for r in rows if r.role == "trial"]
    finals = [r for r in rows if r.role != "trial"]
    # equal budget: the same number of trial rows per method; trials run before any final cell
    assert sorted(r.method for r in trials) == ["prefix_tuning"] * 2 + ["prompt_tuning"] * 2
    assert rows.index(finals[0]) > max(rows.index(r) for r in trials)
    assert all(r.packed_with == 2 for r in trials), "trials that differ only in lr should pack"
    planned = {c.id for c in pinned_cells(cells)}
    latest = latest_by_cell(rows)
    for r in finals:
        assert r.cell_id in planned  # the chosen lr did not change the planned id
        own = [latest[t.id] for t in next(c for c in pinned_cells(cells) if c.id == r.cell_id).trials()]
        scores = {str(t.config["train"]["lr"]): t.holdout_score for t in own}
        best = max(GRID, key=lambda lr: (scores[str(lr)], -GRID.index(lr)))
        assert r.search["scores"] == scores and r.search["chosen"] == {"lr": best} and r.lr == best
        assert r.search["grid"] == {"lr": GRID} and r.search["trials"] == 2
        assert r.search["cost_s"] == pytest.approx(sum(t.train_seconds + t.eval_seconds for t in own))
        assert r.holdout_score is not None and r.eval_examples == 7 and r.plateaued is None
    # tables never show a trial
    frame = records_frame(rows)
    assert len(frame) == len(finals) == 4
    # a second run finds every cell, trials included, finished
    again = run_cells(cells, tmp_path, data, CPU, log=logs.append)
    assert again["ran"] == 0 and again["skipped"] == len(rows) == 8
    assert len(read_records(tmp_path)[0]) == 8


def test_trials_only_runs_the_trials_says_each_choice_and_leaves_the_finals_for_the_next_run(tmp_path, data):
    """`run --trials-only`: a look at each search (its choice, an edge of its grid) before any
    final runs; the next plain run runs the finals alone, with the same choice."""
    # finals at P = 2 and 3, trials at 3: the line names the trials' length, which the choice serves
    cells = expand(suite(prefix_lengths=[2, 3], seeds=[0], search={"lr": GRID, "prefix_length": 3}), "s")
    logs: list[str] = []
    counts = run_cells(cells, tmp_path, data, CPU, log=logs.append, trials_only=True)
    rows = read_records(tmp_path)[0]
    assert counts["ran"] == 2 and counts["failed"] == 0 and counts["skipped"] == 2
    assert sorted(r.role for r in rows) == ["trial", "trial"]
    (said,) = [line for line in logs if line.startswith("search prefix_tuning")]
    scores = {str(r.config["train"]["lr"]): r.holdout_score for r in rows}
    best = max(GRID, key=lambda lr: (scores[str(lr)], -GRID.index(lr)))
    assert f"lr {best} chosen" in said and "held-out accuracy" in said
    assert said.startswith("search prefix_tuning glue/sst2 tiny-llama (trials at P=3):") and "P=2" not in said
    finals = run_cells(cells, tmp_path, data, CPU, log=logs.append)
    assert finals["ran"] == 2
    assert {r.lr for r in read_records(tmp_path)[0] if r.role != "trial"} == {best}


def test_when_every_trial_fails_the_final_cells_fail_saying_why(tmp_path, data, monkeypatch):
    real = cell_mod.train_stage

    def diverging(run):
        if run.cell.is_trial:
            raise NonFiniteLossError("non-finite training loss nan at step 1")
        real(run)

    monkeypatch.setattr(cell_mod, "train_stage", diverging)
    cells = expand(suite(), "s")
    counts = run_cells(cells, tmp_path, data, CPU, log=quiet)
    rows = read_records(tmp_path)[0]
    assert counts["ran"] == 4 and counts["failed"] == 4
    finals = [r for r in rows if r.role != "trial"]
    assert len(finals) == 2
    for r in finals:
        assert r.status == "failed" and "every trial of its learning-rate search failed" in r.error
        assert r.search["chosen"] == {} and set(r.search["scores"].values()) == {None}
        assert r.error.count("non-finite training loss") == 2


# --- early stopping -----------------------------------------------------------------------------

def _attached(data, **train) -> cell_mod.CellRun:
    doc = suite(seeds=[0], train={"train_steps": 10, "batch_size": 4, "eval_limit": 8, "train_limit": 40,
                                  "max_length": 32, "holdout": 0.25, "eval_every": 1, **train})
    del doc["suites"]["s"]["search"]
    doc["suites"]["s"]["train"]["lr"] = 1e-2
    cell = pinned_cells(expand(doc, "s"))[0]
    run = prepare(cell, data, CPU)
    attach(run)
    return run


@pytest.mark.parametrize("higher,scores,best,stopped,plateaued", [
    (True, [0.5, 0.7, 0.6, 0.65, 0.9], 2, 4, True),
    (False, [0.5, 0.3, 0.4, 0.35, 0.1], 2, 4, True),
    (True, [0.1 * k for k in range(1, 11)], 10, 10, False),  # still improving when the budget ran out
])
def test_training_stops_at_a_plateau_and_keeps_the_best_parameters(data, higher, scores, best, stopped, plateaued):
    run = _attached(data, patience=2)
    snapshots: dict[int, dict[str, torch.Tensor]] = {}

    def scripted(step: int) -> float:
        snapshots[step] = {k: v.clone() for k, v in run.adapter.trainable_state_dict().items()}
        return scores[step - 1]

    stats = train(run.adapter, run.formulation, run.train_examples, run.cfg, run.cell.seed, CPU,
                  periodic_eval=scripted, higher_is_better=higher)
    assert (stats.best_step, stats.stopped_step, stats.plateaued) == (best, stopped, plateaued)
    assert len(stats.losses) == stopped and [s for s, _ in stats.evals] == list(range(1, stopped + 1))
    kept = run.adapter.trainable_state_dict()
    assert all(torch.equal(kept[k], snapshots[best][k]) for k in kept)
    if best != stopped:
        assert any(not torch.equal(kept[k], snapshots[stopped][k]) for k in kept)


def test_an_early_stopped_row_records_its_plateau_and_the_kept_parameters_held_out_score(data, monkeypatch):
    """The held-out score of a parameter state is scripted (0.5, 0.7, 0.6, 0.65, ... in order of
    first sight), so the row's holdout_score says which state the cell kept."""
    run_template = _attached(data, patience=2)
    script = iter([0.5, 0.7, 0.6, 0.65, 0.66, 0.67, 0.68, 0.69, 0.7, 0.71])
    seen: list[tuple[dict[str, torch.Tensor], float]] = []
    real = cell_mod.score_holdout

    def scored(run):
        res, metrics = real(run)
        state = {k: v.clone() for k, v in run.adapter.trainable_state_dict().items()}
        value = next((v for old, v in seen if all(torch.equal(old[k], state[k]) for k in state)), None)
        if value is None:
            value = next(script)
            seen.append((state, value))
        return res, {**metrics, "accuracy": value}

    monkeypatch.setattr(cell_mod, "score_holdout", scored)
    row = run_cell(run_template.cell, data, CPU)
    assert row.status == "ok", row.error
    assert (row.best_step, row.stopped_step, row.train_steps, row.plateaued) == (2, 4, 4, True)
    assert row.best_step < row.stopped_step < run_template.cfg.train_steps
    assert row.holdout_score == 0.7  # the restored parameters are step 2's (step 4's would score 0.65)


def test_cells_that_stop_early_pack_unless_a_scheduler_watches_them(data):
    """patience alone packs (each packed cell stops at its own plateau: tests/test_packed_cells.py);
    trials a search scheduler watches run alone, since it stops them one at a time."""
    runs = []
    for seed in (0, 1):
        run = _attached(data, patience=2)
        run = dataclasses.replace(run, cell=dataclasses.replace(run.cell, seed=seed))
        runs.append(run)
    assert packed.why_not(runs) == ""
    watched = [copy.copy(r) for r in runs]
    watched[1].on_eval = lambda step, score: False
    assert "scheduler" in packed.why_not(watched)


def test_a_held_out_slice_of_generation_rows_holds_out_whole_inputs():
    """E2E trains on one row per reference, each scored against all of its MR's references: a
    held-out row whose MR also trained would be scored against targets the model saw."""
    from tasks.base import Example

    rows = [Example(f"mr {m}", label=f"ref {m}.{r}", references=tuple(f"ref {m}.{k}" for k in range(1 + m % 4)))
            for m in range(60) for r in range(1 + m % 4)]
    train_rows, held = data_mod.split_holdout(rows, 0.1, None, seed=3)
    assert {e.text_a for e in train_rows}.isdisjoint({e.text_a for e in held})
    assert round(0.1 * len(rows)) <= len(held) < round(0.1 * len(rows)) + 4  # whole groups, just past the target
    assert len(train_rows) + len(held) == len(rows)
    again, held_again = data_mod.split_holdout(rows, 0.1, None, seed=4)
    assert held_again == held  # the same slice for every seed and trial; the training draw moves
    # rows with one reference each (classification, regression) keep the row-level draw
    single = [Example(f"s {i}", label=i % 2) for i in range(50)]
    _, held_single = data_mod.split_holdout(single, 0.1, None, seed=3)
    assert len(held_single) == 5


def test_the_real_e2e_devset_holds_out_whole_mrs(data):
    split = data_mod.load_split("e2e_nlg", "train", data)
    train_rows, held = data_mod.split_holdout(split.examples, 0.02, None, seed=0)
    assert held and {e.text_a for e in train_rows}.isdisjoint({e.text_a for e in held})


@pytest.mark.parametrize("patience", [0, 5])
def test_a_scheduler_hook_sees_each_evaluation_and_its_stop_keeps_the_best_parameters(data, patience):
    """``on_eval`` (Ray Tune's hook, bench/run/executors/tune_trials.py) sees every periodic
    evaluation training would continue past; its stop keeps the best evaluation's parameters and
    is not patience's. A hook that never stops changes nothing."""
    scores = [0.5, 0.7, 0.6, 0.65, 0.9]
    seen: list[tuple[int, float]] = []
    snapshots: dict[int, dict[str, torch.Tensor]] = {}
    run = _attached(data, patience=patience)

    def scripted(step: int) -> float:
        snapshots[step] = {k: v.clone() for k, v in run.adapter.trainable_state_dict().items()}
        return scores[step - 1]

    def scheduler(step: int, score: float) -> bool:
        seen.append((step, score))
        return step == 4

    stats = train(run.adapter, run.formulation, run.train_examples, run.cfg, run.cell.seed, CPU,
                  periodic_eval=scripted, on_eval=scheduler)
    assert seen == [(1, 0.5), (2, 0.7), (3, 0.6), (4, 0.65)]
    assert stats.scheduler_stop and (stats.best_step, stats.stopped_step, len(stats.losses)) == (2, 4, 4)
    assert stats.plateaued is (False if patience else None)
    kept = run.adapter.trainable_state_dict()
    assert all(torch.equal(kept[k], snapshots[2][k]) for k in kept)
    # a hook that never stops: the same run as without one (no patience: the last parameters kept)
    plain, watched = _attached(data), _attached(data)
    a = train(plain.adapter, plain.formulation, plain.train_examples, plain.cfg, 0, CPU, periodic_eval=lambda s: 0.5)
    b = train(watched.adapter, watched.formulation, watched.train_examples, watched.cfg, 0, CPU,
              periodic_eval=lambda s: 0.5, on_eval=lambda step, score: False)
    assert a.losses == b.losses and a.evals == b.evals and not b.scheduler_stop
    assert (b.best_step, b.plateaued) == (None, None)
    assert all(torch.equal(plain.adapter.trainable_state_dict()[k], v)
               for k, v in watched.adapter.trainable_state_dict().items())


def test_a_trial_a_scheduler_stopped_is_recorded_so_and_reproduced_with_the_same_stop(data, tmp_path):
    from bench.run.job import CellJob, execute_cell
    from bench.run.rerun import find_record, reproduce

    doc = suite(seeds=[0], train={"train_steps": 6, "batch_size": 4, "train_limit": 40, "max_length": 32,
                                  "holdout": 0.25, "eval_every": 2})
    trial = next(c for c in pinned_cells(expand(doc, "s")) if c.is_trial)
    trial = dataclasses.replace(trial, selection={"scheduler": {"name": "asha"}})  # as the ray executor hands it
    row = execute_cell(trial, CellJob(data, "cpu", str(tmp_path)), on_eval=lambda step, score: step == 2)
    assert row.status == "ok", row.error
    assert row.search == {"scheduler": {"name": "asha"}, "stopped_by_scheduler": True}
    assert (row.stopped_step, row.train_steps, row.best_step, row.plateaued) == (2, 2, 2, None)
    again = reproduce(find_record(tmp_path, row.cell_id), data, CPU)
    assert again.ok and again.rerun.stopped_step == 2 and again.rerun.holdout_score == row.holdout_score


def test_finals_at_the_searched_length_run_before_the_length_sweep():
    """The standard suite's SST-2 part: every method's finals at P = 20 (the search's length)
    and the no-prefix methods come before any P = 5 or 50 cell, each group in matrix order."""
    from bench.run import packed
    from bench.run.driver import searched_length_first
    from bench.run.matrix import load_suite

    finals = [c for c in load_suite(None, "standard-sst2-minilm") if not c.is_trial]
    ordered = searched_length_first(packed.ordered(finals))
    lengths = [c.prefix_length for c in ordered]
    first_other = next(i for i, p in enumerate(lengths) if p not in (None, 20))
    assert all(p in (5, 50) for p in lengths[first_other:])
    head = ordered[:first_other]
    assert [c.method for c in head][:6] == ["prefix_tuning"] * 3 + ["lora"] * 3
    assert len(head) == len({c.method for c in finals}) * 3  # every method, three seeds
    assert sorted(c.id for c in ordered) == sorted(c.id for c in finals)


def test_a_trial_dropped_from_a_moved_grid_is_not_reported_stale():
    """A grid moved by one step drops a rate: that trial's row stands at no planned cell (the
    new rate is a new trial, not a re-run of it). A trial at a planned rate whose code changed
    is stale, as any cell."""
    from _records_fixture import record

    from bench.run import staleness

    cells = expand(suite(seeds=[0]), "s")
    trial = next(c for c in cells if c.is_trial and c.train["lr"] == GRID[0])
    dropped = record("prefix_tuning", 5, 0, prefix_length=2, task="glue/sst2", backbone="tiny-llama", cell_id="old-rate",
                     role="trial", lr=GRID[0] / 10, config=trial.resolved())
    changed = record("prefix_tuning", 5, 0, prefix_length=2, task="glue/sst2", backbone="tiny-llama", cell_id="old-code",
                     role="trial", lr=GRID[0], config=trial.resolved())
    assert not staleness.plan(cells, [dropped], {}).stale
    assert sum(staleness.plan(cells, [dropped, changed], {}).stale.values()) == 1
