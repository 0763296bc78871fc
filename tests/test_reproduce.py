"""prefix-bench reproduce: re-run a recorded tiny-llama cell from its stored config."""

from __future__ import annotations

import json
import os

import pytest
import torch

from bench.cli import main
from bench.core.records import read_records
from bench.run.driver import run_cells
from bench.run.matrix import load_suite
from tasks import DataSettings

pytestmark = pytest.mark.skipif(not os.environ.get("PREFIX_BENCH_DATA_DIR"),
                                reason="needs offline GLUE data: set PREFIX_BENCH_DATA_DIR")


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    results = tmp_path_factory.mktemp("runs")
    cells = [c for c in load_suite(None, "tiny") if c.method == "prompt_tuning"]
    counts = run_cells(cells, results, DataSettings.from_env(), torch.device("cpu"), log=lambda _: None)
    assert counts["ran"] == 1 and counts["failed"] == 0
    record = read_records(results)[0][0]
    return results, record


def test_reproduce_recorded_cell_within_tolerance(recorded, capsys):
    results, record = recorded
    assert main(["reproduce", record.cell_id[:8], "--results", str(results), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert f"REPRODUCED {record.cell_id}" in out and f"recorded accuracy = {record.main_score!r}" in out
    # accuracy on 16 examples is coarse; the training loss shows the re-run is the same run
    assert f"final loss {record.final_loss!r} -> {record.final_loss!r}" in out


def test_a_moved_metric_is_not_reproduced(recorded, tmp_path, capsys):
    results, record = recorded
    edited = json.loads((results / "records.jsonl").read_text().splitlines()[0])
    edited["main_score"] = record.main_score + 0.25
    (tmp_path / "records.jsonl").write_text(json.dumps(edited) + "\n")
    assert main(["reproduce", record.cell_id, "--results", str(tmp_path), "--device", "cpu"]) == 1
    assert f"NOT REPRODUCED {record.cell_id}" in capsys.readouterr().err


def test_unknown_or_tampered_cells_are_refused(recorded, tmp_path, capsys):
    results, record = recorded
    assert main(["reproduce", "ffffffff", "--results", str(results)]) == 2
    assert "no cell 'ffffffff'" in capsys.readouterr().err
    edited = json.loads((results / "records.jsonl").read_text().splitlines()[0])
    edited["config"]["train"]["lr"] = 0.5
    (tmp_path / "records.jsonl").write_text(json.dumps(edited) + "\n")
    assert main(["reproduce", record.cell_id, "--results", str(tmp_path), "--device", "cpu"]) == 2
    assert "hashes to" in capsys.readouterr().err


def test_code_changes_are_reported_and_schema_1_records_refused(recorded, tmp_path, capsys, monkeypatch):
    from methods import METHODS

    results, record = recorded
    monkeypatch.setattr(METHODS.get("prompt_tuning"), "version", "2")
    main(["reproduce", record.cell_id, "--results", str(results), "--device", "cpu"])
    assert "environment: code: method version 1 -> 2" in capsys.readouterr().out
    old = json.loads((results / "records.jsonl").read_text().splitlines()[0])
    old["config"].pop("identity")
    (tmp_path / "records.jsonl").write_text(json.dumps(dict(old, schema_version=1)) + "\n")
    assert main(["reproduce", record.cell_id, "--results", str(tmp_path), "--device", "cpu"]) == 2
    assert "recorded before cell ids covered the code (schema 1)" in capsys.readouterr().err
