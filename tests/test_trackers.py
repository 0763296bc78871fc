"""Experiment trackers (``run --tracker``): what each backend logged, read back with its own
reader, is the row's curve and numbers; trackers change no cell id and no result; a missing
backend is named before anything runs; a failing tracker leaves the row as it was."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

from bench.core.config import ConfigError
from bench.core.records import read_records
from bench.run.driver import run_cells
from bench.run.matrix import expand

TRAIN = {"train_steps": 6, "batch_size": 4, "eval_limit": 16, "train_limit": 64, "max_length": 32,
         "eval_every": 2, "warmup_ratio": 0.5}
SUITE = {"methods": ["prompt_tuning", "lora"], "tasks": ["glue/sst2"], "backbones": ["tiny-llama"],
         "prefix_lengths": [2], "seeds": [0], "train": TRAIN}


def tiny_cells(suite=SUITE):
    return expand({"suites": {"t": suite}}, "t")


def rows(results_dir: Path) -> dict:
    records, problems = read_records(results_dir)
    assert problems == []
    return {r.cell_id: r for r in records}


def curve(results_dir: Path, cell_id: str) -> dict:
    return json.loads((results_dir / "curves" / f"{cell_id}.json").read_text())


def optimizer_lrs(row) -> list[float]:
    """Each step's learning rate as a real optimizer under the trainer's schedule sees it."""
    import torch

    from bench.run.trainer import linear_schedule

    steps = row.config["train"]["train_steps"]
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=row.lr)
    sched = linear_schedule(opt, math.ceil(row.config["train"]["warmup_ratio"] * steps), steps)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.fixture(scope="module")
def plain(tmp_path_factory, data_dir):
    """The same cells without a tracker: ids and numbers every tracked run must reproduce."""
    from tasks import DataSettings

    out = tmp_path_factory.mktemp("plain")
    run_cells(tiny_cells(), out, DataSettings(data_dir, allow_hub=False), "cpu", log=lambda s: None, threads=1)
    return rows(out)


def same_results(tracked: dict, plain: dict) -> None:
    assert tracked.keys() == plain.keys()  # the tracker is in no cell id
    for cid, r in tracked.items():
        assert r.status == "ok"
        assert (r.metrics, r.first_loss, r.final_loss) == (plain[cid].metrics, plain[cid].first_loss,
                                                           plain[cid].final_loss)


def test_tensorboard_event_files_hold_the_rows_curves(plain, data, tmp_path):
    """In-process cells; the tracker's backend stays out of the training process."""
    pytest.importorskip("tensorboard")
    assert "torch.utils.tensorboard" not in sys.modules
    counts = run_cells(tiny_cells(), tmp_path, data, "cpu", log=lambda s: None, threads=1, tracker="tensorboard")
    assert counts["failed"] == 0
    assert "torch.utils.tensorboard" not in sys.modules  # logged by the tracker's own process
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tracked = rows(tmp_path)
    same_results(tracked, plain)
    for cid, row in tracked.items():
        run_dir = tmp_path / "tensorboard" / cid / row.run_id  # one run per cell, named by its id
        acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
        acc.Reload()
        scalars = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
        c = curve(tmp_path, cid)
        assert [s for s, _ in scalars["train/loss"]] == list(range(1, TRAIN["train_steps"] + 1))
        assert [v for _, v in scalars["train/loss"]] == pytest.approx(c["loss"], rel=1e-6)  # float32 in events
        assert [v for _, v in scalars["train/lr"]] == pytest.approx(optimizer_lrs(row), rel=1e-6)
        assert scalars["eval/accuracy"] == [(s, pytest.approx(v, rel=1e-6)) for s, v in c["evals"]]
        assert len(c["evals"]) == 2  # steps 2 and 4 (the last step's is the final evaluation)
        assert scalars["row/main_score"] == [(TRAIN["train_steps"], pytest.approx(row.main_score))]
        assert scalars["row/metrics/accuracy"][0][1] == pytest.approx(row.metrics["accuracy"])
        assert scalars["row/trainable_params"][0][1] == row.trainable_params
        assert "cell/text_summary" in acc.Tags()["tensors"]  # the identity as a text summary


def test_mlflow_file_store_from_worker_processes(plain, data, tmp_path):
    """Workers of the subprocess executor log; the driver made the experiment up front."""
    pytest.importorskip("mlflow")
    import os

    from mlflow.tracking import MlflowClient

    from bench.run.executors import make_executor

    counts = run_cells(tiny_cells(), tmp_path, data, "cpu", log=lambda s: None, threads=1, tracker="mlflow",
                       executor=make_executor("subprocess", {"workers": 2}))
    assert counts["failed"] == 0
    tracked = rows(tmp_path)
    same_results(tracked, plain)
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("prefix-bench/t")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == sorted(tracked)
    for run in runs:
        row, rid = tracked[run.info.run_name], run.info.run_id
        c = curve(tmp_path, row.cell_id)
        assert run.info.status == "FINISHED"
        assert run.data.tags["prefix_bench.method"] == row.method
        assert run.data.tags["prefix_bench.run_id"] == row.run_id
        assert float(run.data.params["lr"]) == row.lr
        assert run.data.params["train.train_steps"] == str(TRAIN["train_steps"])
        loss = sorted((m.step, m.value) for m in client.get_metric_history(rid, "train/loss"))
        assert loss == list(enumerate(c["loss"], 1))
        lr = sorted((m.step, m.value) for m in client.get_metric_history(rid, "train/lr"))
        assert [v for _, v in lr] == pytest.approx(optimizer_lrs(row), rel=1e-12)
        evals = sorted((m.step, m.value) for m in client.get_metric_history(rid, "eval/accuracy"))
        assert evals == [tuple(e) for e in c["evals"]]
        assert run.data.metrics["row/main_score"] == row.main_score
        assert run.data.metrics["row/train_tokens"] == row.train_tokens


def test_a_missing_backend_is_named_before_anything_runs(monkeypatch, data, tmp_path, capsys):
    from bench import cli
    from bench.run.trackers import make_tracker

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(ConfigError, match=r"--tracker mlflow needs the 'mlflow-skinny' package.*pip install"):
        make_tracker("mlflow", "", tmp_path)
    with pytest.raises(ConfigError, match="mlflow-skinny"):
        run_cells(tiny_cells(), tmp_path, data, "cpu", log=lambda s: None, tracker="mlflow")
    assert not (tmp_path / "records.jsonl").exists()  # nothing ran
    with pytest.raises(ConfigError, match=r"unknown tracker 'tensorbord' \(did you mean 'tensorboard'\?\)"):
        make_tracker("tensorbord", "", tmp_path)
    code = cli.main(["run", "--suite", "tiny", "--dry-run", "--tracker", "mlflow", "--results", str(tmp_path)])
    assert code == 2 and "mlflow-skinny" in capsys.readouterr().err


def test_a_failing_tracker_is_a_warning_and_the_row_stands(data, tmp_path):
    pytest.importorskip("tensorboard")
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")  # the log folder's place is a file: every write there fails
    suite = {**SUITE, "methods": ["lora"]}
    said: list[str] = []
    counts = run_cells(tiny_cells(suite), tmp_path / "out", data, "cpu", log=said.append, threads=1,
                       tracker="tensorboard", tracker_uri=str(blocked))
    assert counts == {"cells": 1, "skipped": 0, "ran": 1, "failed": 0}
    assert [r.status for r in rows(tmp_path / "out").values()] == ["ok"]
    assert any(line.startswith("--tracker tensorboard could not log cell") and "its row is stored" in line
               for line in said), said


def test_suite_tracker_table_is_checked():
    cells = tiny_cells({**SUITE, "tracker": {"name": "mlflow", "uri": "file:///tmp/x"}})
    assert {c.id for c in cells} == {c.id for c in tiny_cells()}  # not in the id
    for bad in ({"uri": "x"}, {"name": "mlflow", "port": 1}, "mlflow", {"name": 3}):
        with pytest.raises(ConfigError, match="'tracker' must be a table with a 'name'"):
            tiny_cells({**SUITE, "tracker": bad})
