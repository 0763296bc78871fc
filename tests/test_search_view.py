"""The search and convergence view: what a reader needs beside a searched suite's scores."""

from __future__ import annotations

import csv

from _records_fixture import record

from bench.report.context import budget_line
from bench.report.render import render

TRAIN = {"train_steps": 1500, "batch_size": 32, "train_limit": 32000, "holdout": 0.025, "patience": 3}


def _searched(method: str, length: int | None, seed: int, chosen: float, edge: str | None, plateaued: bool,
              best_step: int) -> object:
    grid = [3e-4, 1e-3, 3e-3]
    search = {"grid": {"lr": grid}, "seed": 0, "prefix_length": 20, "trials": 3, "cost_s": 5400.0,
              "scores": {"0.0003": 0.8725, "0.001": 0.865, "0.003": None}, "chosen": {"lr": chosen},
              **({"edge": edge} if edge else {})}
    return record(method, length, seed, search=search, plateaued=plateaued, best_step=best_step,
                  config={"method": method, "train": TRAIN})


def _rows():
    return ([_searched("prefix_tuning", p, s, 3e-4, "bottom", s != 2, 1000 + 100 * s) for p in (5, 20) for s in (0, 1, 2)]
            + [_searched("lora", None, s, 1e-3, None, True, 900) for s in (0, 1, 2)])


def test_the_search_view_shows_grid_scores_choice_edge_and_convergence(tmp_path):
    render(_rows(), tmp_path, plots=False)
    with open(tmp_path / "search.csv", newline="", encoding="utf-8") as f:
        rows = {r["method"]: r for r in csv.DictReader(f)}
    pt = rows["prefix_tuning"]
    assert pt["rates"] == "0.0003 · 0.001 · 0.003"
    assert pt["held-out score per rate"] == "0.8725 · 0.8650 · failed"  # a failed trial says so
    # the edge with its margin over the next rate (0.8725 against 0.8650), to weigh against noise
    assert (pt["chosen lr"], pt["edge"], pt["searched at"]) == ("0.0003", "bottom (by 0.0075)", "P=20, seed 0")
    assert pt["plateaued"] == "4/6" and pt["best step (median) / cap"] == "1100 / 1500"
    assert pt["search cost"] == "1.5 h"
    assert rows["lora"]["edge"] == "" and rows["lora"]["plateaued"] == "3/3"
    board = (tmp_path / "leaderboard.md").read_text(encoding="utf-8")
    assert "How each learning rate was chosen" in board
    assert 'id="search"' in (tmp_path / "index.html").read_text(encoding="utf-8")


def test_no_search_no_view(tmp_path):
    render([record("lora", None, s) for s in (0, 1)], tmp_path, plots=False)
    assert not (tmp_path / "search.csv").exists()
    assert "How each learning rate" not in (tmp_path / "leaderboard.md").read_text(encoding="utf-8")


def test_tables_state_the_budget_and_the_runs_that_hit_the_step_cap(tmp_path):
    line = budget_line(_rows())
    assert "at most 1500 steps of 32 (48,000 examples) drawn from at most 32000 training examples" in line
    assert "a share 0.025 of them held out" in line
    assert "7 of 9 runs plateaued" in line and "2 reached the step cap still improving" in line
    render(_rows(), tmp_path, plots=False)
    assert line in (tmp_path / "glue_sst2__minilm-l6.md").read_text(encoding="utf-8")
    fixed = record("lora", None, 0, config={"method": "lora", "train": {"train_steps": 120, "batch_size": 32}})
    assert budget_line([fixed]) == ("Trained for at most 120 steps of 32 (3,840 examples) drawn from the whole training split; "
                                    "no early stopping (a fixed number of steps).")
    assert budget_line([record("lora", None, 0)]) == ""  # a row that does not say how it trained


def test_search_fields_from_disk_are_untrusted(tmp_path):
    bad = record("lora", None, 0, search={"grid": {"lr": ["x", 1e-3]}, "scores": "nope", "chosen": 5,
                                          "edge": "<b>", "cost_s": float("nan")})
    render([bad, record("lora", None, 1)], tmp_path, plots=False)
    with open(tmp_path / "search.csv", newline="", encoding="utf-8") as f:
        (row,) = list(csv.DictReader(f))
    assert (row["rates"], row["held-out score per rate"], row["edge"], row["search cost"]) == (
        "? · 0.001", "failed · failed", "", "")


def _trial(method: str, lr: object, score: object, cell: str, **extra) -> object:
    return record(method, 20 if method != "lora" else None, 0, cell_id=cell, role="trial", lr=lr,
                  holdout_score=score, main_score=score, plateaued=True, train_seconds=600.0, eval_seconds=30.0,
                  **extra)


def test_a_search_still_running_shows_its_finished_trials_and_no_result(tmp_path):
    trials = [_trial("prefix_tuning", 1e-3, 0.865, "t1"), _trial("prefix_tuning", 3e-4, 0.8725, "t2"),
              _trial("prefix_tuning", 3e-3, 0.5, "t3"),
              _trial("prefix_tuning", 3e-3, 0.855, "t3"),  # the newest row of a retried trial counts
              _trial("lora", 1e-3, 0.889, "t4")]
    finals = [_searched("lora", None, s, 1e-3, None, True, 900) for s in (0, 1, 2)]
    render(trials + finals, tmp_path, plots=False)
    with open(tmp_path / "search_progress.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == ["prefix_tuning"]  # lora's search is finished: its finals show it
    assert rows[0]["held-out score per rate so far"] == "0.0003: 0.8725 · 0.001: 0.8650 · 0.003: 0.8550"
    assert rows[0]["trials at"] == "P=20, seed 0" and rows[0]["trial time"] == "32 min"
    board = (tmp_path / "leaderboard.md").read_text(encoding="utf-8")
    assert "Searches still running" in board and "0.8725" in board
    # trials are never results: no table averages them
    assert "0.8725" not in (tmp_path / "glue_sst2__minilm-l6.md").read_text(encoding="utf-8")


def test_trials_alone_still_give_the_progress_table_and_untrusted_fields_are_escaped(tmp_path):
    render([_trial("prefix_tuning", "1e-3|x", float("nan"), "t1", status="failed", task="glue/<b>|t"),
            _trial("prefix_tuning", 3e-4, 0.87, "t2", task="glue/<b>|t")], tmp_path, plots=False)
    text = (tmp_path / "search_progress.md").read_text(encoding="utf-8")
    assert "?: failed" in text and "0.0003: 0.8700" in text
    assert "<b>" not in text and "glue/<b>|t" not in text
    assert not (tmp_path / "leaderboard.md").exists()  # no result row: no leaderboard yet


def test_all_records_shows_a_trial_only_while_its_rate_is_in_the_grid(tmp_path):
    """render --all-records keeps every result row, but a trial dropped from a moved grid chose
    nothing: the progress table shows the current grid's trials only."""
    from argparse import Namespace

    from bench import cli
    from bench.run.matrix import load_suite

    toml = tmp_path / "s.toml"
    toml.write_text('[suites.x]\nmethods=["lora"]\ntasks=["glue/sst2"]\nbackbones=["tiny-llama"]\n'
                    'prefix_lengths=[2]\nseeds=[0]\nsearch={lr=[1e-3, 3e-3]}\ntrain={train_steps=2, holdout=0.25}\n')
    pin = {"threads": 0, "deterministic": False, "weights": ""}
    trials = [c.pinned(0, False, "") for c in load_suite(toml, "x") if c.is_trial]
    rows = [record("lora", None, 0, cell_id=t.id, role="trial", lr=t.train["lr"], config=pin) for t in trials]
    rows.append(record("lora", None, 0, cell_id="an-earlier-grid", role="trial", lr=1e-2, config=pin))
    rows.append(record("lora", None, 1, cell_id="a-cell-gone", config=pin))  # a result row stays
    args = Namespace(config=str(toml), suite="x", all_records=True)
    kept = {r.cell_id for r in cli._current_cells_only(rows, args)}
    assert kept == {t.id for t in trials} | {"a-cell-gone"}


def test_an_edge_choice_whose_next_rate_failed_says_so():
    from bench.report.search_view import _edge
    grid = [3e-4, 1e-3, 3e-3]
    assert _edge("top", grid, {"0.003": 0.9, "0.001": None}) == "top (next rate failed)"
    assert _edge("top", grid, {"0.003": 0.80, "0.001": 0.85}) == "top (by 0.0500)"  # lower is better: still a margin
    assert _edge("inside", grid, {}) == "" and _edge("top", [1e-3], {"0.001": 0.9}) == ""
