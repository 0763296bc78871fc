"""The runner never records a NaN, infinite or missing main score as ok: the row is failed
with an error naming the metric and value, its metrics are kept, and the next ``run``
retries the cell (a failed cell is not finished)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from bench.core.records import ResultRecord, finished_ids, read_records
from bench.run.cell import checked_score
from bench.run.driver import run_cells
from bench.run.matrix import expand
from tasks import TASKS


def ok_record(score: object, metrics: dict | None = None) -> ResultRecord:
    return ResultRecord(cell_id="c", suite="s", method="lora", task="glue/sst2", backbone="b", prefix_length=None,
                        seed=0, status="ok", main_metric="accuracy", main_score=score,
                        metrics={"accuracy": score} if metrics is None else metrics)


@pytest.mark.parametrize("score", [math.nan, math.inf, -math.inf])
def test_non_finite_score_becomes_a_failed_row(score):
    r = checked_score(ok_record(score))
    assert r.status == "failed"
    assert f"main score accuracy = {float(score)} is not a finite number" in r.error
    assert r.metrics == {"accuracy": score} or math.isnan(r.metrics["accuracy"])  # kept for diagnosis


def test_missing_main_metric_becomes_a_failed_row():
    r = checked_score(ok_record(None, {"f1": 0.5}))
    assert r.status == "failed" and "hold no main metric 'accuracy'" in r.error and "['f1']" in r.error


def test_finite_score_stays_ok():
    r = ok_record(0.75)
    assert checked_score(r) is r


def test_a_nan_metric_from_a_real_cell_is_a_failed_row_and_is_retried(tmp_path, data, monkeypatch):
    task = TASKS.get("glue/sst2")
    real = task.compute_metrics
    monkeypatch.setattr(task, "compute_metrics",
                        lambda preds, examples: {**real(preds, examples), "accuracy": math.nan})
    doc = {"suites": {"t": {"methods": ["lora"], "tasks": ["glue/sst2"], "backbones": ["tiny-llama"],
                            "prefix_lengths": [2], "seeds": [0],
                            "train": {"train_steps": 2, "batch_size": 4, "eval_limit": 8, "train_limit": 16,
                                      "max_length": 32}}}}
    cells = expand(doc, "t")
    logs: list[str] = []
    counts = run_cells(cells, tmp_path, data, torch.device("cpu"), log=logs.append)
    assert counts["failed"] == 1
    (row,) = read_records(tmp_path)[0]
    assert row.status == "failed" and "main score accuracy = nan is not a finite number" in row.error
    assert math.isnan(row.main_score) and row.train_steps == 2  # what was measured is kept
    assert any("FAILED main score accuracy = nan" in line for line in logs)
    assert finished_ids([row]) == set()
    monkeypatch.setattr(task, "compute_metrics", real)
    again = run_cells(cells, tmp_path, data, torch.device("cpu"), log=logs.append)
    assert again["ran"] == 1 and again["failed"] == 0  # the NaN cell was not counted as finished
    assert dataclasses.asdict(read_records(tmp_path)[0][-1])["status"] == "ok"
