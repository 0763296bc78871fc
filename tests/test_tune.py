"""A learning-rate search's trials on Ray Tune (the ``ray`` executor with ``tune = true``,
bench/run/executors/tune_trials.py): the same rows as the local grid under ``fifo``; under
``asha`` a clearly bad trial is stopped early, says so, and loses; bad options fail before
anything runs. One local Ray instance serves every test that needs one (starting Ray is slow)."""

from __future__ import annotations

import importlib.util
import math

import pytest

from bench.core.config import ConfigError
from bench.core.records import latest_by_cell, read_records
from bench.run import search
from bench.run.driver import pinned_cells, run_cells
from bench.run.executors import make_executor, parse_options
from bench.run.matrix import expand

pytestmark = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                                reason="ray not installed (pip install 'prefix-bench[distributed]')")

GOOD, BAD = 1e-2, 1e-8  # lora on the tiny model: held-out accuracy 0.65 vs 0.45 after 2 steps


def suite(**train) -> dict:
    return {"suites": {"s": {
        "methods": ["lora"], "tasks": ["glue/sst2"], "backbones": ["tiny-llama"], "prefix_lengths": [2],
        "seeds": [0], "search": {"lr": [GOOD, BAD]},
        "train": {"train_steps": 8, "batch_size": 8, "eval_limit": 7, "train_limit": 80, "max_length": 32,
                  "holdout": 0.25, "eval_every": 2, **train}}}}


def quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def ray_instance():
    """One local Ray instance for the module; the executor uses it and leaves it running."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow  # Ray, Tune and a fresh worker per cell: ~1-2 min on 2 busy cores
def test_fifo_on_tune_gives_the_local_grid_rows_and_choice(ray_instance, data, tmp_path):
    trials = [c for c in expand(suite(), "s") if c.is_trial]
    run_cells(trials, tmp_path / "local", data, "cpu", log=quiet, threads=1)
    executor = make_executor("ray", {"tune": True, "scheduler": "fifo", "cpus_per_cell": 1})
    logs: list[str] = []
    counts = run_cells(trials, tmp_path / "tune", data, "cpu", log=logs.append, executor=executor, threads=1)
    assert counts == {"cells": 2, "skipped": 0, "ran": 2, "failed": 0}, logs
    assert any("ray tune: 2 trial(s) in 1 group(s), scheduler fifo" in line for line in logs)
    local = {r.cell_id: r for r in read_records(tmp_path / "local")[0]}
    tuned = {r.cell_id: r for r in read_records(tmp_path / "tune")[0]}
    assert local.keys() == tuned.keys()  # the executor's settings are not in any id
    for cid, r in tuned.items():
        ref = local[cid]
        assert r.status == ref.status == "ok" and r.role == "trial"
        assert math.isclose(r.holdout_score, ref.holdout_score, abs_tol=1e-9)
        assert r.metrics == pytest.approx(ref.metrics) and r.first_loss == pytest.approx(ref.first_loss)
        assert (r.train_steps, r.stopped_step, r.best_step, r.plateaued) == (8, 8, None, None)
        assert ref.search == {} and r.search == {"scheduler": {"name": "fifo"}, "stopped_by_scheduler": False}
    final = pinned_cells([c for c in expand(suite(), "s") if not c.is_trial], threads=1)[0]
    chose = [search.choose(final, latest_by_cell(list(rows.values())), True).selection for rows in (local, tuned)]
    assert chose[0]["chosen"] == chose[1]["chosen"] == {"lr": GOOD} and chose[0]["scores"] == chose[1]["scores"]
    assert chose[1]["scheduler"] == {"name": "fifo"} and chose[1]["stopped_early"] == 0 and "scheduler" not in chose[0]
    # trials already recorded are not run again (and Tune is not started for nothing)
    again = run_cells(trials, tmp_path / "tune", data, "cpu", log=quiet, executor=executor, threads=1)
    assert again["ran"] == 0 and again["skipped"] == 2 and len(read_records(tmp_path / "tune")[0]) == 2


@pytest.mark.slow  # as above, plus the final cell
def test_asha_stops_the_bad_trial_early_says_so_and_the_final_cell_takes_the_good_lr(ray_instance, data, tmp_path):
    # two CPUs per cell on the two-CPU instance: one trial at a time, in grid order, so the good
    # trial reaches the first rung before the bad one (ASHA's cut is that of the trials before)
    executor = make_executor("ray", {"tune": True, "scheduler": "asha", "cpus_per_cell": 2})
    cells = expand(suite(), "s")
    logs: list[str] = []
    counts = run_cells(cells, tmp_path, data, "cpu", log=logs.append, executor=executor, threads=1)
    rows = read_records(tmp_path)[0]
    assert counts == {"cells": 3, "skipped": 0, "ran": 3, "failed": 0}, [r.error for r in rows]
    trials = {r.config["train"]["lr"]: r for r in rows if r.role == "trial"}
    asha = {"name": "asha", "grace_period": 2, "max_t": 8, "reduction_factor": 2.0, "metric": "holdout_score",
            "mode": "max"}
    bad, good = trials[BAD], trials[GOOD]
    assert bad.status == "ok" and bad.search == {"scheduler": asha, "stopped_by_scheduler": True}
    assert (bad.stopped_step, bad.train_steps, bad.best_step, bad.plateaued) == (2, 2, 2, None)
    assert good.search == {"scheduler": asha, "stopped_by_scheduler": False}
    assert (good.stopped_step, good.train_steps) == (8, 8)
    assert bad.holdout_score < good.holdout_score
    (final,) = [r for r in rows if r.role != "trial"]
    assert final.status == "ok" and final.lr == GOOD and final.search["chosen"] == {"lr": GOOD}
    assert final.search["scheduler"] == asha and final.search["stopped_early"] == 1
    assert final.search["scores"] == {str(GOOD): good.holdout_score, str(BAD): bad.holdout_score}
    # the early stop shows in the search's cost: the stopped trial trained 2 of its 8 steps
    assert final.search["cost_s"] == pytest.approx(sum(r.train_seconds + r.eval_seconds for r in (good, bad)))


@pytest.mark.parametrize("options,message", [
    ({"scheduler": "hyperband"}, r"scheduler 'hyperband' is not one of fifo, asha"),
    ({"scheduler": "asha"}, r"scheduler = 'asha' needs tune = true"),
    ({"tune": True, "grace_evals": 2}, r"grace_evals and reduction_factor are asha's settings.*scheduler is 'fifo'"),
    ({"tune": True, "scheduler": "asha", "reduction_factor": 1}, r"reduction_factor must be > 1, got 1.0"),
    ({"tune": True, "scheduler": "asha", "grace_evals": 0}, r"grace_evals must be > 0, got 0"),
    ({"tune": "yes"}, r"key 'tune' has value 'yes', expected bool"),
])
def test_bad_tune_options_are_config_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        make_executor("ray", options)


def test_tune_options_from_the_command_line():
    options = parse_options(["tune=true", "scheduler=asha", "grace_evals=2", "reduction_factor=3"])
    config = make_executor("ray", options).config
    assert (config.tune, config.scheduler, config.grace_evals, config.reduction_factor) == (True, "asha", 2, 3.0)


@pytest.mark.parametrize("train,message", [
    ({"eval_every": 0}, r"asha stops trials on their periodic held-out evaluations, but this trial has eval_every = 0"),
    ({"eval_every": 8}, r"asha's grace period, grace_evals 1 x eval_every 8 = 8 steps, leaves no evaluation"),
])
def test_cells_asha_cannot_schedule_are_refused_before_anything_runs(data, tmp_path, train, message):
    executor = make_executor("ray", {"tune": True, "scheduler": "asha"})
    with pytest.raises(ConfigError, match=r"ray executor, trial lora/glue/sst2/tiny-llama/P=None lr=0.01: " + message):
        run_cells(expand(suite(**train), "s"), tmp_path, data, "cpu", log=quiet, executor=executor)
    assert not list(tmp_path.iterdir())  # nothing ran, nothing was written
