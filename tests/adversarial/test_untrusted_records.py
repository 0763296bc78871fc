"""Records are untrusted input to run (resume), render, compare and reproduce: rows that do
not fit the schema are skipped, reported in one warning line with their line numbers, and
the rest is used. No traceback."""

from __future__ import annotations

import json
import re

import pytest

from bench.cli import main
from bench.core.record_check import RecordError, parse_row, problem_summary
from bench.core.records import ResultRecord, read_records
from bench.run.matrix import Cell, load_suite

from ._helpers import row, write_rows

# (line content, what the warning must say about it); good rows sit between them
BAD = [
    (row(metrics=[0.5]), "field 'metrics'"),                            # a list where an object belongs
    (row(seed="0"), "field 'seed'"),                                    # a string where a number belongs
    (row(main_score="0.9"), "field 'main_score'"),
    (row(train_seconds=float("nan")), "field 'train_seconds'"),         # NaN where a measurement is finite
    (row(main_score=float("inf")), "field 'main_score'"),               # Infinity nowhere
    (row(metrics={"accuracy": float("-inf")}), "field 'metrics'"),
    (row(prefix_length=2**70), "64-bit"),                               # pandas cannot hold it
    (row(prefix_length=0), "prefix_length"),
    (row(trainable_params=True), "field 'trainable_params'"),           # a bool is not a count
    (row(adapter_bytes=-5), ">= 0"),
    (row(config=[1, 2]), "field 'config'"),
    (row(versions={"torch": 2}), "field 'versions'"),
    (row(collapsed="no"), "field 'collapsed'"),
    (row(kernels={"threads": 4}), "field 'kernels'"),
    ({k: v for k, v in row().items() if k != "cell_id"}, "missing field(s) cell_id"),
    ("null", "expected a JSON object"),
    ("[1, 2]", "expected a JSON object"),
    ('"a string"', "expected a JSON object"),
    ("[" * 100_000, "RecursionError"),                                 # deep nesting
    ('{"cell_id": ' + "9" * 5000 + "}", "ValueError"),                 # an integer too long to convert
    (b"\xff\xfe garbage", "unreadable line"),
    ('{"cell_id": "torn", "sta', "unreadable line"),
]


def _file_with_bad_rows(folder, good: list[dict]) -> list[int]:
    """records.jsonl with every BAD line after a good row; returns the bad lines' numbers."""
    lines, bad_lines = [], []
    for i, (content, _) in enumerate(BAD):
        lines.append(good[i % len(good)])
        lines.append(content)
        bad_lines.append(len(lines))
    lines += good[len(BAD):]
    write_rows(folder, lines)
    return bad_lines


def _good_rows(n: int = 24) -> list[dict]:
    return [row(cell_id=f"g{i}", seed=i % 3, method=("lora", "prefix_tuning")[i % 2],
                prefix_length=None if i % 2 == 0 else 5, main_score=0.8 + i / 1000) for i in range(n)]


def test_each_bad_row_is_skipped_with_its_line_and_reason(tmp_path):
    good = _good_rows()
    bad_lines = _file_with_bad_rows(tmp_path, good)
    records, problems = read_records(tmp_path)
    assert [r.cell_id for r in records] == [g["cell_id"] for g in good]
    assert len(problems) == len(BAD)
    for (_, needle), line, problem in zip(BAD, bad_lines, problems, strict=True):
        assert f"records.jsonl:{line}: " in problem and needle in problem, (line, problem)


def test_render_skips_bad_rows_in_one_warning_line_and_renders_the_rest(tmp_path, capsys):
    good = _good_rows()
    bad_lines = _file_with_bad_rows(tmp_path / "runs", good)
    assert main(["render", "--results", str(tmp_path / "runs"), "--tables", str(tmp_path / "t"),
                 "--all-records", "--quiet"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert f"skipped {len(BAD)} unusable row(s)" in err[0]
    assert "line(s) " + ", ".join(map(str, bad_lines[:20])) + ", ..." in err[0]  # the first 20 lines
    assert "Traceback" not in err[0]
    board = (tmp_path / "t" / "glue_sst2__minilm-l6.md").read_text()
    assert "n=12" in board  # 12 good rows per method, none of the bad ones


def test_compare_skips_bad_rows_and_compares_the_rest(tmp_path, capsys):
    good = _good_rows()
    _file_with_bad_rows(tmp_path / "a", good)
    _file_with_bad_rows(tmp_path / "b", good)
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    out = capsys.readouterr()
    assert len(out.err.strip().splitlines()) == 2  # one warning line per folder
    assert "no regression in 2 shared cell(s)" in out.out


def test_resume_skips_bad_rows_and_runs_nothing_already_finished(tmp_path, data):
    from bench.run.data import data_fingerprint
    from bench.run.driver import pinned_cells, run_cells

    cells = pinned_cells(load_suite(None, "tiny"))  # the ids run_cells gives them (threads pinned)
    finished = [row(cell_id=c.id, method=c.method, backbone=c.backbone, prefix_length=c.prefix_length,
                    seed=c.seed, data_fingerprint=data_fingerprint(c.task, data)) for c in cells]
    _file_with_bad_rows(tmp_path, finished)
    log: list[str] = []
    counts = run_cells(cells, tmp_path, data, "cpu", log=log.append)
    assert counts["ran"] == 0 and counts["skipped"] == len(cells)
    warnings = [line for line in log if line.startswith("warning:")]
    assert len(warnings) == 1 and f"skipped {len(BAD)} unusable row(s)" in warnings[0]


def _hostile_cell_row(**resolved_changes) -> tuple[dict, str]:
    """A finished row whose config is tampered with *and* whose cell_id matches the
    tampered config, as a hostile file would craft it."""
    cell = load_suite(None, "tiny")[0]
    resolved = {**cell.resolved(), **resolved_changes}
    forged = Cell.from_resolved(resolved, suite=cell.suite)
    return row(cell_id=forged.id, method=cell.method, config=resolved, backbone=cell.backbone), forged.id


@pytest.mark.parametrize("change, needle", [
    ({"train": [1, 2]}, "key 'train' has value [1, 2], expected dict"),
    ({"train": {"lr": "fast"}}, "key 'lr' has value 'fast'"),
    ({"train": {"batch_size": 0}}, "batch_size must be > 0"),
    ({"method_args": "x"}, "key 'method_args' has value 'x'"),
    ({"seed": "0"}, "key 'seed' has value '0'"),
])
def test_reproduce_refuses_a_forged_config_before_any_model(tmp_path, capsys, no_model, change, needle):
    forged, cid = _hostile_cell_row(**change)
    write_rows(tmp_path, [forged])
    assert main(["reproduce", cid, "--results", str(tmp_path), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err, err


def test_parse_row_round_trips_a_real_record_and_keeps_nan_where_allowed():
    rec = ResultRecord(**row(main_score=float("nan"), metrics={"pearson": float("nan")}, first_loss=None))
    back = parse_row(json.loads(rec.to_json()), "f:1")
    assert back.cell_id == rec.cell_id and back.metrics.keys() == {"pearson"}
    with pytest.raises(RecordError, match="field 'lr'"):
        parse_row({**row(), "lr": float("nan")}, "f:1")
    assert parse_row({**row(), "a_future_field": [1]}, "f:1").cell_id == row()["cell_id"]  # unknown keys: ignored
    old = {k: v for k, v in row(schema_version=1).items() if k not in ("inference_params", "kernels")}
    assert parse_row(old, "f:1").inference_params is None  # an older schema is migrated, then checked


def test_problem_summary_is_one_line_with_count_lines_and_reasons():
    problems = [f"/r/records.jsonl:{i}: reason {i}" for i in (3, 7, 9, 12)]
    line = problem_summary(problems)
    assert "\n" not in line and line.startswith("warning: skipped 4 unusable row(s) of /r/records.jsonl")
    assert "line(s) 3, 7, 9, 12" in line and "line 3: reason 3" in line and "and 1 more" in line
    assert re.search(r"reason 12", line) is None
